"""Answer extraction, answer comparison and quality flags for generated responses.

Extraction (:func:`extract_answer`), in order:

1. the content of the **last** ``\\boxed{...}`` (or ``\\fbox{...}``) in the response, braces
   balanced, anywhere in the response. The last box decides: when it is empty or a placeholder
   (``\\boxed{}``, ``\\boxed{ }``, ``\\boxed{?}``, ``\\boxed{answer}``, ``\\boxed{...}``, see
   :func:`is_placeholder`) the response has **no answer**, even after an earlier non-empty box
   (a model that ends on an empty box did not commit to the earlier one) and even when an
   ``answer is`` phrase surrounds it (``The answer is \\boxed{}.`` is no answer, never the
   answer ``\\boxed{}``);
2. otherwise, in the part after the last ``</think>`` (the whole response if it has no
   ``</think>``; nothing if a ``<think>`` block is left open), the last of
   ``final answer is X`` / ``answer is X`` / ``answer: X`` / a GSM8K-style ``#### X`` line;
3. otherwise ``None`` (flag ``no_answer``). A fallback phrase whose value is a placeholder
   (``Answer: ?``) or contains a box is no answer either. There is deliberately no "last number
   in the text" fallback: it turns unfinished reasoning into spurious correct answers.

Comparison (:func:`answers_match`): ``math-verify`` when installed (timeouts on the main
thread; ``parsing_timeout=None`` off it, where its signal-based timeout cannot work), then a
built-in exact numeric comparison (integers, decimals, ``1,000``, ``\\frac{a}{b}``, ``a/b``,
``50\\%``, ``\\text{...}``/``$`` stripped) and finally normalised string equality. Two answers
match if either check says so; the numeric check is exact, so it adds no false positives.

Flags (:func:`quality_flags`), an empty list means a clean sample:

* ``truncated`` - the backend stopped at the token limit (``finish_reason == "length"``);
* ``no_answer`` - no final answer could be extracted;
* ``unclosed_think`` - a ``<think>`` block (opened in the response, or at the end of the prompt
  by the chat template) has no matching ``</think>``;
* ``repetition`` - degenerate looping, see :func:`repetition_ratio`: the fraction of word-level
  8-grams that repeat an earlier 8-gram is above 0.5 (only for responses of at least 64 words).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

FLAGS = ("truncated", "no_answer", "unclosed_think", "repetition")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

REPETITION_NGRAM = 8
REPETITION_THRESHOLD = 0.5
REPETITION_MIN_TOKENS = 64


def _last_braced(text: str, commands: tuple[str, ...] = ("\\boxed", "\\fbox")) -> str | None:
    """Content of the last ``\\cmd{...}`` with balanced braces (``\\boxed 5`` also accepted)."""
    best_pos, best = -1, None
    for cmd in commands:
        start = 0
        while True:
            i = text.find(cmd, start)
            if i < 0:
                break
            start = i + len(cmd)
            j = start
            while j < len(text) and text[j] == " ":
                j += 1
            if j < len(text) and text[j] == "{":
                depth, k = 0, j
                while k < len(text):
                    if text[k] == "{":
                        depth += 1
                    elif text[k] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    k += 1
                if depth == 0 and i > best_pos:
                    best_pos, best = i, text[j + 1 : k].strip()
            elif cmd == "\\boxed" and j > start and j < len(text):
                m = re.match(r"[^\s$]+", text[j:])
                if m and i > best_pos:
                    best_pos, best = i, m.group(0).rstrip(".,")
    return best


_FALLBACK_PATTERNS = (
    re.compile(r"final answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s*)?(?:\n|$)", re.IGNORECASE),
    re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s*)?(?:\n|$)", re.IGNORECASE),
    re.compile(r"answer\s*:\s*\$?([^\n$]+?)\$?\s*(?:\.\s*)?(?:\n|$)", re.IGNORECASE),
    re.compile(r"^####\s*([^\n]+?)\s*$", re.MULTILINE),
)


_PLACEHOLDERS = frozenset(
    {
        "",
        "answer",
        "youranswer",
        "finalanswer",
        "theanswer",
        "answerhere",
        "\\ldots",
        "\\cdots",
        "\\dots",
        "\\square",
        "\\blacksquare",
        "\\boxed{}",
    }
)


def is_placeholder(answer: str) -> bool:
    """Whether an extracted box content / answer phrase is a placeholder rather than an answer.

    Placeholders: the empty string, only ``?``, ``.``, ``_``, ``…`` or ``-`` characters
    (``?``, ``...``, ``___``), and the words / commands in ``_PLACEHOLDERS`` (``answer``,
    ``your answer``, ``final answer``, ``\\ldots``, ``\\square``, ...), compared after
    :func:`normalize_answer` and lower-casing. A real answer such as ``x`` or ``0`` is never one.
    """
    s = normalize_answer(answer).lower().replace("\\_", "_")
    if re.fullmatch(r"[?._\u2026-]*", s):
        return True
    return s in _PLACEHOLDERS


def answer_part(response: str) -> str | None:
    """The text after the last ``</think>``; the whole text without think tags; None if open."""
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE) :]
    if THINK_OPEN in response:
        return None
    return response


def extract_answer(response: str) -> str | None:
    """The final answer of a response (see the module docstring for the fallbacks)."""
    boxed = _last_braced(response)
    if boxed is not None:
        return None if is_placeholder(boxed) else boxed
    tail = answer_part(response)
    if not tail:
        return None
    best_pos, best = -1, None
    for pat in _FALLBACK_PATTERNS:
        for m in pat.finditer(tail):
            val = m.group(1).strip().rstrip(".").strip()
            if val and m.start(1) > best_pos:
                best_pos, best = m.start(1), val
        if best is not None:
            break
    if best is None or is_placeholder(best) or "\\boxed" in best or "\\fbox" in best:
        return None
    return best


# --------------------------------------------------------------------------- comparison

_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_FRAC_SHORT = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")


def normalize_answer(ans: str) -> str:
    """Light normalisation: strip ``$``, ``\\text{}``, ``\\left/\\right``, spaces, trailing dot."""
    s = ans.strip()
    s = _TEXT_CMD.sub(r"\1", s)
    s = s.replace("$", "").replace("\\left", "").replace("\\right", "").replace("\\!", "")
    s = s.replace("\\,", "").replace("\\ ", "").replace("{,}", ",")
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    if s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1]
    return s


def parse_number(ans: str) -> Fraction | None:
    """An exact rational for numeric answers (``1,000``, ``-2.5``, ``\\frac{1}{2}``, ``3/4``,
    ``50\\%`` = 1/2), else None. Trailing unit words (``9 apples``) are ignored."""
    s = normalize_answer(ans)
    s = re.sub(r"(?<=\d)[a-zA-Z]+$", "", s)  # units glued after normalisation: "9apples"
    percent = s.endswith("\\%") or s.endswith("%")
    s = s.removesuffix("\\%").removesuffix("%")
    m = _FRAC.match(s) or _FRAC_SHORT.match(s)
    try:
        if m:
            sign = -1 if m.group(1) else 1
            den = int(m.group(3))
            if den == 0:
                return None
            val = sign * Fraction(int(m.group(2)), den)
        else:
            if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
                s = s.replace(",", "")
            if re.fullmatch(r"-?\d+/\d+", s):
                num, den_s = s.split("/")
                if int(den_s) == 0:
                    return None
                val = Fraction(int(num), int(den_s))
            elif re.fullmatch(r"-?(\d+\.?\d*|\.\d+)(e-?\d+)?", s):
                val = Fraction(s)
            else:
                return None
    except (ValueError, ZeroDivisionError):
        return None
    return val / 100 if percent else val


@lru_cache(maxsize=1)
def _math_verify() -> Any:
    try:
        import math_verify  # noqa: PLC0415 - optional extra
    except ImportError:
        logger.warning(
            "math-verify is not installed: answers are checked numerically only (symbolic answers "
            "count as wrong); install it with pip install 'ssgr[data]'"
        )
        return None

    class _NoTimeoutWarning(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Timeout is disabled" not in record.getMessage()

    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_NoTimeoutWarning())
    return math_verify


def _math_verify_match(pred: str, gold: str) -> bool:
    mv = _math_verify()
    if mv is None:
        return False
    on_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if on_main else None
    try:
        g = mv.parse("$" + gold + "$" if "\\boxed" not in gold else gold, parsing_timeout=timeout)
        p = mv.parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(mv.verify(g, p, timeout_seconds=timeout))
    except Exception as e:  # math-verify raises a variety of sympy errors on odd input
        logger.debug("math-verify failed on %r vs %r: %s", pred, gold, e)
        return False


def answers_match(pred: str | None, gold: str, use_math_verify: bool = True) -> bool:
    """Whether the extracted answer ``pred`` equals the gold answer (see module docstring)."""
    if pred is None:
        return False
    a, b = parse_number(pred), parse_number(gold)
    if a is not None and b is not None:
        if a == b:
            return True
    elif normalize_answer(pred) == normalize_answer(gold):
        return True
    return use_math_verify and _math_verify_match(pred, gold)


# --------------------------------------------------------------------------- flags

_WORD = re.compile(r"\w+|[^\w\s]")


def repetition_ratio(text: str, n: int = REPETITION_NGRAM) -> float:
    """Fraction of the word-level ``n``-grams of ``text`` that repeat an earlier ``n``-gram.

    Words are ``\\w+`` runs and single punctuation marks. 0 for text shorter than ``n`` words; a
    text that loops on one phrase tends to 1.
    """
    toks = _WORD.findall(text)
    total = len(toks) - n + 1
    if total <= 0:
        return 0.0
    grams = {tuple(toks[i : i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


def is_repetitive(
    text: str,
    n: int = REPETITION_NGRAM,
    threshold: float = REPETITION_THRESHOLD,
    min_tokens: int = REPETITION_MIN_TOKENS,
) -> bool:
    """The ``repetition`` flag: at least ``min_tokens`` words and ratio above ``threshold``."""
    if len(_WORD.findall(text)) < min_tokens:
        return False
    return repetition_ratio(text, n) > threshold


def think_unclosed(response: str, prompt: str = "") -> bool:
    """Whether a ``<think>`` block is left open at the end of the response.

    The block may be opened by the chat template at the end of ``prompt`` (DeepSeek-R1,
    Qwen3 thinking templates) or inside the response.
    """
    last_open = response.rfind(THINK_OPEN)
    last_close = response.rfind(THINK_CLOSE)
    if last_open >= 0:
        return last_close < last_open
    if last_close >= 0:
        return False
    p = prompt.rstrip()
    return p.rfind(THINK_OPEN) > p.rfind(THINK_CLOSE) and p.rfind(THINK_OPEN) >= 0


def quality_flags(
    response: str, finish_reason: str, answer: str | None, prompt: str = ""
) -> list[str]:
    """The list of quality flags of one sample (order as in :data:`FLAGS`)."""
    flags = []
    if finish_reason == "length":
        flags.append("truncated")
    if answer is None:
        flags.append("no_answer")
    if think_unclosed(response, prompt):
        flags.append("unclosed_think")
    if is_repetitive(response):
        flags.append("repetition")
    return flags


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Result of checking one response."""

    answer: str | None
    correct: bool
    flags: list[str]


def check_response(response: str, gold: str, finish_reason: str, prompt: str = "") -> Verdict:
    """Extract the answer, compare it with ``gold`` and compute the quality flags."""
    ans = extract_answer(response)
    return Verdict(
        ans, answers_match(ans, gold), quality_flags(response, finish_reason, ans, prompt)
    )
