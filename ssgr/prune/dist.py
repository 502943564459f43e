"""Data-parallel calibration under ``torchrun`` (issue #17): ``torchrun --nproc-per-node N -m ssgr
prune ...``.

Started under torchrun (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` in the environment), ``ssgr
prune`` joins a :mod:`torch.distributed` process group (NCCL on CUDA, gloo on CPU;
``--dist-backend`` overrides), one device per rank (``cuda:LOCAL_RANK``). Each rank runs only its
share of the calibration sequences (:func:`split_by_tokens`) through each layer with its own
activation store; the statistics (Hessian sums ``X^T X``, Wanda's column squared norms, token
counts, per expert for MoE) are summed over ranks with one ``all_reduce`` per accumulator, in
the fixed order the layer's groups are pruned, before they are averaged by the *global* token
count, so every rank prunes from the same statistics (equal to a single process's to fp32
rounding: the partial sums are added in another order). Rank 0 alone writes ``--out``'s model
files and the report. This is the data-parallel scheme llm-compressor uses for GPTQ, applied to
SparseGPT/Wanda.

Checkpoints and ``--resume``: where a single process checkpoints the next layer's inputs
(``--checkpoint-every``), each rank saves its share under ``--out``'s state folder, one file
per sequence named by its global number; rank 0 records the checkpoint once every rank has
written its part (:class:`ssgr.prune.state.RunState`), so a kill of any rank at any point leaves
the previous checkpoint valid, and ``--resume`` (under any number of ranks, or one process)
continues from the checkpoint layer. On several nodes ``--out`` must be a filesystem every rank
sees for this; otherwise rank 0 finds parts missing, keeps the previous checkpoint and warns.

Logging (:func:`ssgr._torchrun.install_rank_logging`, shared with ``ssgr generate``): INFO from
rank 0 only, WARNING and ERROR from every rank, each line prefixed ``[rank r/N]``.

Failure handling: before each reduction and at each layer end the ranks all-reduce an error flag
(:meth:`DistContext.check`); a rank that raised contributes its rank and broadcasts its message,
so every rank stops with that rank's error instead of waiting. A rank that dies outright makes the
other ranks' next collective fail (gloo: at once; NCCL: after ``--dist-timeout`` seconds), which
is reported as :class:`DistError`.

Without torchrun :func:`from_env` returns None and nothing here runs. A process group the caller
initialised (``torch.distributed.init_process_group`` before :func:`ssgr.prune.prune_model`) is
used as it is and left open.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from ssgr import _torchrun

from .errors import PruneError

log = logging.getLogger(__name__)

#: The ``--dist-backend`` choices ("auto": nccl on CUDA, gloo on CPU).
DIST_BACKENDS = ("auto", "gloo", "nccl")


class DistError(PruneError):
    """A distributed run failed: another rank's error, a lost rank, or a collective timeout."""


def torchrun_env() -> _torchrun.TorchrunEnv | None:
    """This process's rank, world size and local rank when started by torchrun (``RANK``,
    ``WORLD_SIZE`` and ``MASTER_ADDR`` set: :func:`ssgr._torchrun.torchrun_env`), else None.

    Raises:
        PruneError when RANK / WORLD_SIZE / LOCAL_RANK are not integers or the rank is outside
        the world.
    """
    return _torchrun.torchrun_env("prune", error=PruneError, need_master=True)


def split_by_tokens(tokens: list[int], world: int) -> list[list[int]]:
    """Assign sequences to ``world`` ranks balanced by token count: longest first (ties: lower
    index first), each into the rank holding the fewest tokens so far (ties: lowest rank), the
    classic LPT greedy. Deterministic. Returns each rank's sequence indices, ascending.

    Args:
        tokens: token count of each sequence.
        world: number of ranks (>= 1).
    """
    load = [0] * world
    share: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(tokens)), key=lambda j: (-tokens[j], j)):
        r = min(range(world), key=lambda k: (load[k], k))
        share[r].append(i)
        load[r] += tokens[i]
    return [sorted(s) for s in share]


@dataclass
class DistContext:
    """This process's place in the process group.

    rank / world: the process group's rank and size; device: this rank's device
    (``cuda:LOCAL_RANK`` on CUDA); backend: the process group's backend; timeout_s: the
    collectives' timeout (seconds).
    """

    rank: int
    world: int
    device: torch.device
    backend: str
    timeout_s: float
    #: Whether :func:`from_env` initialised the process group (then :meth:`close` destroys it;
    #: a group the caller initialised is left to the caller).
    owns_group: bool = False

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the output and the report."""
        return self.rank == 0

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except DistError:
            raise
        except (RuntimeError, tdist.DistBackendError) as exc:
            raise DistError(
                f"rank {self.rank}: the collective {what} failed ({str(exc).splitlines()[0]}): "
                f"another rank died or did not answer within --dist-timeout {self.timeout_s:g}"
                " s; see the other ranks' ERROR lines, then rerun (with --resume where the run "
                "left a state folder)") from None

    def check(self, exc: BaseException | None = None, where: str = "") -> None:
        """Error-flag all-reduce: every rank calls it at the same points; ``exc`` is this rank's
        failure (None: fine). When any rank failed, every rank raises :class:`DistError` with
        the lowest failing rank's message (the failing rank re-raises its own error)."""
        flag = torch.tensor([self.world if exc is None else self.rank], dtype=torch.int64,
                            device=self._comm_device)
        with self._collective(f"error check {where}".strip()):
            tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
        bad = int(flag.item())
        if bad == self.world:
            return
        msg = [f"{type(exc).__name__}: {exc}" if exc is not None else None]
        with self._collective("error broadcast"):
            tdist.broadcast_object_list(msg, src=bad)
        if exc is not None and bad == self.rank:
            raise exc
        raise DistError(f"rank {bad} failed{' ' + where if where else ''}: {msg[0]}")

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """Sum ``t`` over ranks in place (any float dtype; on a gloo group a CUDA tensor goes
        through the CPU). Returns ``t``."""
        with self._collective(f"all_reduce of {what}"):
            if t.device != self._comm_device:
                tmp = t.to(self._comm_device)
                tdist.all_reduce(tmp)
                t.copy_(tmp)
            else:
                tdist.all_reduce(t)
        return t

    def broadcast_(self, t: torch.Tensor, src: int, what: str) -> torch.Tensor:
        """Overwrite ``t`` with rank ``src``'s ``t`` (in place; on a gloo group a CUDA tensor
        goes through the CPU). Returns ``t``."""
        with self._collective(f"broadcast of {what}"):
            if t.device != self._comm_device or not t.is_contiguous():
                tmp = t.to(self._comm_device).contiguous()
                tdist.broadcast(tmp, src=src)
                t.copy_(tmp)
            else:
                tdist.broadcast(t, src=src)
        return t

    def reduce_stats(self, acc, what: str) -> None:
        """Sum one accumulator's statistics over ranks in place: the Hessian sum ``H[d, d]``
        (fp32; its gather buffer flushed first) or the column squared norms ``[d]``, and the
        token count, so its token-averaged results use the *global* token count."""
        if acc is None:
            return
        self.all_reduce_(acc.sums(), what)
        n = torch.tensor([acc.tokens], dtype=torch.int64, device=self._comm_device)
        with self._collective(f"all_reduce of the token count of {what}"):
            tdist.all_reduce(n)
        acc.tokens = int(n.item())

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        """``obj`` of rank ``src`` (picklable), on every rank."""
        box = [obj]
        with self._collective("broadcast_object_list"):
            tdist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_objects(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        out: list[object] = [None] * self.world
        with self._collective("all_gather_object"):
            tdist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group (when :func:`from_env` joined it). The logging filters stay,
        so the CLI's last ERROR line still names the rank."""
        _torchrun.leave_group(self.owns_group)


def from_env(backend: str, timeout_s: float, device: torch.device) -> DistContext | None:
    """Join the torchrun process group (None when not started by torchrun).

    Args:
        backend: ``--dist-backend`` ("auto": nccl when ``device`` is CUDA, else gloo).
        timeout_s: collective timeout in seconds (``--dist-timeout``).
        device: the ``--device`` choice; a CUDA device becomes ``cuda:LOCAL_RANK``.
    Raises:
        PruneError for an unknown backend, nccl without CUDA, or fewer CUDA devices than local
        ranks.
    """
    env = torchrun_env()
    if env is None:
        return None
    rank, world, local = env.rank, env.world_size, env.local_rank
    if backend not in DIST_BACKENDS:
        raise PruneError(f"--dist-backend {backend}: choose one of {', '.join(DIST_BACKENDS)}")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise PruneError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s); start at most that many processes per node "
                             "(torchrun --nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise PruneError("--dist-backend nccl needs CUDA devices; use gloo on CPU")
    kw = {"device_id": device} if backend == "nccl" else {}
    owns = _torchrun.join_group(backend, timeout_s, **kw)
    if not owns:  # a group the caller initialised: its backend and timeout apply
        backend = tdist.get_backend()
        rank, world = tdist.get_rank(), tdist.get_world_size()
    _torchrun.install_rank_logging(rank, world)
    ctx = DistContext(rank, world, device, backend, timeout_s, owns)
    log.info("torchrun: rank %d of %d on %s (%s)", rank, world, device, backend)
    return ctx

