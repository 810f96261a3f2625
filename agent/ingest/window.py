"""Windowing: turn each stream's ``SampleBlock``s into overlapping fixed-length windows.

A ``Windower`` holds one stream's state; ``StreamWindowers`` is the small registry the pipeline
keeps, one ``Windower`` per ``SampleBlock.stream``, created on first sight. Window ``k`` of a
stream covers its samples ``[k * hop, k * hop + length)``. Exactly once: however a stream is cut
into blocks, every window is emitted once, in order, with the same samples as if the whole
stream had arrived in one block (tests/test_window.py proves it with hypothesis).

Cost: a block that completes no window is copied into a preallocated carry buffer and nothing
else happens. A block that completes windows is joined to the carry, viewed as a strided
``(n, length, channels)`` array (what ``sliding_window_view(...)[::hop]`` gives, without its
Python overhead) and materialised with one ufunc call into a fresh array the caller owns.
Passing the ``Preprocessor`` as ``transform`` fuses normalisation into that copy, so window
bytes are written once. Windows whose last sample is in a block all share that block's
``t_in``: a window is only ever completed by the block holding its last sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import MAX_STREAMS
from agent.errors import SampleError
from agent.ingest.samples import SampleBlock

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

Transform = Callable[[F32, npt.NDArray[Any]], object]
"""``transform(src, out)``: write the windows ``src`` (n, length, channels), possibly a strided
view, into ``out`` (same shape; float32, or the transform's own ``dtype`` attribute when it
has one). ``Preprocessor`` and ``agent.ingest.preprocess.Encoder`` instances fit."""


_MIN_CARRY = 1024  # samples the carry buffer holds beyond one window, so small blocks append


@dataclass(frozen=True, slots=True)
class Windows:
    """The windows one block completed, oldest first (possibly none)."""

    data: npt.NDArray[Any]
    """(n, length, channels), C-contiguous, freshly allocated (the caller owns it): float32,
    or the transform's dtype (an ``Encoder`` writes the model's int8 input)."""
    ts: F64
    """(n,) timestamp (epoch s) of each window's last sample; may be a view of the block's."""
    t_in: float
    """``perf_counter()`` when the block holding every window's last sample entered the agent."""
    first: int
    """Stream-wide number of ``data[0]``: window ``i`` is the stream's window ``first + i``."""

    def __len__(self) -> int:
        return int(self.data.shape[0])


def _copy(src: F32, out: F32) -> None:
    np.copyto(out, src)


class Windower:
    """Sliding windows over one stream: ``length`` samples, a new window every ``hop``."""

    def __init__(
        self, length: int, hop: int, channels: int, *, transform: Transform | None = None
    ) -> None:
        if length < 1 or channels < 1:
            raise ValueError(f"length ({length}) and channels ({channels}) must be >= 1")
        if not 1 <= hop <= length:
            raise ValueError(f"hop ({hop}) must be between 1 and length ({length})")
        self.length = length
        self.hop = hop
        self.channels = channels
        self._transform: Transform = transform if transform is not None else _copy
        self._buf: F32 = np.empty((length + max(length, _MIN_CARRY), channels), np.float32)
        self._pending = 0  # samples in _buf: those from window self._count's first sample on
        self._count = 0  # windows emitted so far
        self._item = np.dtype(np.float32).itemsize
        self._row = (channels,)
        self._empty = Windows(
            np.empty((0, length, channels), np.float32), np.empty(0, np.float64), 0.0, 0
        )

    @property
    def pending(self) -> int:
        """Samples carried over, waiting for later blocks to complete their windows."""
        return self._pending

    @property
    def emitted(self) -> int:
        """Windows emitted since creation or the last ``reset``."""
        return self._count

    def reset(self) -> None:
        """Forget the carried samples (a gap, a model swap with a new window) and the count."""
        self._pending = 0
        self._count = 0

    def push(self, block: SampleBlock, transform: Transform | None = None) -> Windows:
        """Add ``block``'s samples; return the windows they complete (often none), written by
        ``transform`` (default: the one given at construction)."""
        values = block.values
        if values.shape[1:] != self._row:
            raise SampleError(
                "wrong_shape",
                f"stream {block.stream!r}: expected (n, {self.channels}) values, "
                f"got shape {values.shape}",
            )
        n = values.shape[0]
        m = self._pending
        total = m + n
        length = self.length
        cap = self._buf.shape[0]
        if total < length:  # fast path: nothing completes
            self._buf[m:total] = values
            self._pending = total
            return self._empty
        if total <= cap:
            self._buf[m:total] = values
            work = self._buf
        elif m == 0:
            work = np.ascontiguousarray(values, dtype=np.float32)
        else:
            work = np.concatenate((self._buf[:m], values.astype(np.float32, copy=False)))
        hop = self.hop
        count = (total - length) // hop + 1
        tf = transform if transform is not None else self._transform
        dtype = getattr(tf, "dtype", np.float32)
        out: npt.NDArray[Any] = np.empty((count, length, self.channels), dtype)
        if count == 1:
            tf(work[:length], out[0])  # 2-D: ufuncs skip a broadcast
        else:
            row = self.channels * self._item
            view: F32 = np.ndarray(
                (count, length, self.channels),
                np.float32,
                work,
                0,
                (hop * row, row, self._item),
            )
            tf(view, out)
        consumed = count * hop
        rest = total - consumed
        self._buf[:rest] = work[consumed:total]  # numpy handles the overlap when work is _buf
        self._pending = rest
        first = self._count
        self._count = first + count
        # window j ends at carry+block index j*hop + length - 1, always inside this block
        last = length - 1 - m
        ts = block.ts[last : last + (count - 1) * hop + 1 : hop]
        return Windows(out, ts, block.t_in, first)


class StreamWindowers:
    """One ``Windower`` per stream, created on a stream's first block.

    At most ``max_streams`` streams are tracked; a block of a further stream raises
    ``SampleError('too_many_streams')`` (the caller counts it and drops the block).
    """

    def __init__(
        self,
        length: int,
        hop: int,
        channels: int,
        *,
        transform: Transform | None = None,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        Windower(length, hop, channels)  # validate the arguments now, not on the first block
        self.length = length
        self.hop = hop
        self.channels = channels
        self.max_streams = max_streams
        self._transform = transform
        self._by_stream: dict[str, Windower] = {}

    def push(self, block: SampleBlock, transform: Transform | None = None) -> Windows:
        """Window ``block`` with its stream's own state (``transform``: as ``Windower.push``)."""
        w = self._by_stream.get(block.stream)
        if w is None:
            if len(self._by_stream) >= self.max_streams:
                raise SampleError(
                    "too_many_streams",
                    f"stream {block.stream!r} would exceed {self.max_streams} streams",
                )
            w = Windower(self.length, self.hop, self.channels, transform=self._transform)
            self._by_stream[block.stream] = w
            log.debug("windowing new stream %s", block.stream)
        return w.push(block, transform)

    def get(self, stream: str) -> Windower | None:
        return self._by_stream.get(stream)

    def drop(self, stream: str) -> None:
        """Forget a stream (its carried samples are discarded)."""
        self._by_stream.pop(stream, None)

    def reset(self) -> None:
        """Forget every stream."""
        self._by_stream.clear()

    def __len__(self) -> int:
        return len(self._by_stream)
