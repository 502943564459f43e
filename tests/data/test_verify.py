import threading

import pytest

from ssgr.data.verify import (
    answers_match,
    check_response,
    extract_answer,
    is_placeholder,
    is_repetitive,
    parse_number,
    quality_flags,
    repetition_ratio,
    think_unclosed,
)


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>try \\boxed{3}</think> so \\boxed{\\frac{1}{2}} and finally \\boxed{42}.", "42"),
        ("</think> The answer is \\boxed{\\frac{a^{2}}{b}} done", "\\frac{a^{2}}{b}"),
        ("</think> \\fbox{7}", "7"),
        ("</think>\\boxed 5.", "5"),
        ("<think>hmm</think>\nThe final answer is 17.", "17"),
        ("<think>hmm</think>\nSo the answer is $-3.5$.\n", "-3.5"),
        ("<think>x</think>\nAnswer: 12\n", "12"),
        ("Work...\n#### 1,234\n", "1,234"),
        ("<think>the answer is 5 probably", None),  # open think: no fallback
        ("<think>a</think> I do not know.", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response",
    [
        "19 * 2 = 36 ... The answer is \\boxed{}.",
        "</think> The answer is \\boxed{ }.",
        "</think> \\boxed{?}",
        "</think> The final answer is \\boxed{answer}.",
        "</think> \\boxed{...}",
        "</think> \\boxed{\\ldots}",
        "</think> \\boxed{\\text{Your Answer}}",
        "</think> \\fbox{}",
        # the last box decides: an empty box after a non-empty one is no answer
        "</think> maybe \\boxed{38}, so the answer is \\boxed{}.",
        "</think> Answer: ?",
        "</think> The answer is ...",
    ],
)
def test_placeholder_box_is_no_answer(response):
    assert extract_answer(response) is None
    v = check_response(response, "38", "stop")
    assert v.answer is None and not v.correct and "no_answer" in v.flags


def test_real_answers_are_not_placeholders():
    assert is_placeholder("") and is_placeholder(" ? ") and is_placeholder("\\_\\_")
    for real in ("0", "x", "-1", "\\frac{1}{2}", "answer 5", "A"):
        assert not is_placeholder(real), real
    assert extract_answer("</think> \\boxed{} then \\boxed{0}") == "0"


def test_boxed_unbalanced_is_ignored():
    assert extract_answer("</think> \\boxed{12 and then it stops") is None
    assert extract_answer("\\boxed{1} </think> \\boxed{2") == "1"


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("1,000", "1000", True),
        ("\\dfrac{3}{4}", "0.75", True),
        ("3/4", "\\frac{3}{4}", True),
        ("\\text{9}", "9", True),
        ("$32$", "32", True),
        ("9 apples", "9", True),
        ("3", "4", False),
        ("-2", "2", False),
        ("0.3333", "1/3", False),
        (None, "1", False),
    ],
)
def test_numeric_fallback(pred, gold, ok):
    assert answers_match(pred, gold, use_math_verify=False) is ok


def test_parse_number():
    assert parse_number("50\\%") * 2 == 1
    assert parse_number("x+1") is None
    assert parse_number("\\frac{1}{0}") is None


def test_math_verify_symbolic_and_off_main_thread():
    pytest.importorskip("math_verify")
    assert not answers_match("x+1", "1+x", use_math_verify=False)
    assert answers_match("x+1", "1+x")
    assert answers_match("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
    assert not answers_match("\\sqrt{3}", "\\sqrt{2}")
    results = []
    t = threading.Thread(target=lambda: results.append(answers_match("2x", "x \\cdot 2")))
    t.start()
    t.join(timeout=60)
    assert results == [True]


def test_repetition_ratio_and_flag():
    loop = "so we add the two numbers again and get 5. " * 20
    assert repetition_ratio(loop) > 0.8
    assert is_repetitive(loop)
    varied = " ".join(
        f"step {i}: {i} + {i * 3} = {i * 4}, then we check parity {i % 2}." for i in range(40)
    )
    assert repetition_ratio(varied) < 0.5
    assert not is_repetitive(varied)
    assert not is_repetitive("a b c d e f g h " * 3)  # too short to judge
    assert repetition_ratio("one two") == 0.0


def test_think_unclosed():
    assert think_unclosed("reasoning without end", prompt="<|im_start|>assistant\n<think>\n")
    assert not think_unclosed("reasoning </think> \\boxed{1}", prompt="assistant\n<think>\n")
    assert think_unclosed("<think> a </think> <think> b")
    assert not think_unclosed("plain answer \\boxed{2}", prompt="no think here")


def test_quality_flags_and_check_response():
    prompt = "<|im_start|>assistant\n<think>\n"
    assert quality_flags("a </think> \\boxed{3}", "stop", "3", prompt) == []
    assert quality_flags("a </think> \\boxed{3}", "length", "3", prompt) == ["truncated"]
    assert quality_flags("a b c", "length", None, prompt) == [
        "truncated",
        "no_answer",
        "unclosed_think",
    ]
    loop = "wait, let me recompute the sum of these. " * 30 + "</think> \\boxed{3}"
    v = check_response(loop, "3", "stop", prompt)
    assert v.correct and v.answer == "3" and v.flags == ["repetition"]
    v = check_response("ok </think> \\boxed{4}", "3", "stop", prompt)
    assert (v.answer, v.correct, v.flags) == ("4", False, [])


def test_one_op_source_solutions_verify_and_levels():
    # builtin:one-op (ssgr.data.problems): each solution's box is its answer; levels as documented
    from ssgr.data.problems import ONE_OP_EXAMPLE, load_problems

    ps = load_problems("builtin:one-op?n=50&seed=2")
    assert ps == load_problems("builtin:one-op?n=50&seed=2") != load_problems("builtin:one-op?n=50")
    for p in ps:
        assert answers_match(extract_answer(p.solution), p.answer), p
        assert p.question.startswith(ONE_OP_EXAMPLE) and p.level == 1 + int(p.id[-5:]) % 5
        a, op, b = p.question.removeprefix(ONE_OP_EXAMPLE).removeprefix("What is ")[:-1].split()
        assert op == {1: "+", 2: "+", 3: "+", 4: "-", 5: "*"}[p.level]
        assert int(p.answer) >= 0 and len(a) <= 2 and len(b) <= 2
    bare = load_problems("builtin:one-op?n=5&shot=0&levels=4")
    assert all(p.question.startswith("What is ") and p.level == 4 for p in bare)
    with pytest.raises(ValueError, match="shot must be 0 or 1"):
        load_problems("builtin:one-op?shot=2")
