"""Which records each process reads: one global order, sliced per global batch.

grain's `ShardByJaxProcess` gives every process its own contiguous block of records, shuffled
apart, so the examples in a global batch depend on the number of processes. `GlobalBatchSampler`
instead keeps the single-process order (shuffle, epochs, per-record RNG) and hands process `p` of
`P` rows `[p*b, (p+1)*b)` of every global batch of `B = P*b` rows. Global batch `t` therefore holds
the same examples in the same rows on one process or many, so a multi-process run reproduces a
single-process run step for step (tests/test_multiprocess.py checks the losses).
"""

from __future__ import annotations

import sys

import grain


class GlobalBatchSampler:
    """A grain sampler over this process's rows of each global batch (use with `NoSharding`).

    Finite orders (`num_epochs` set) are cut to a multiple of `process_count` records and the last,
    partial global batch is split evenly, so every process yields the same number of batches and
    no process waits in a collective the others never reach.
    """

    def __init__(self, num_records: int, global_batch_size: int, *, shuffle: bool, num_epochs: int | None,
                 seed: int, process_index: int, process_count: int):
        if global_batch_size % process_count:
            raise ValueError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
        self._base = grain.samplers.IndexSampler(
            num_records=num_records, shard_options=grain.sharding.NoSharding(), shuffle=shuffle,
            num_epochs=num_epochs, seed=seed,
        )
        self._global, self._count, self._index = global_batch_size, process_count, process_index
        self._local = global_batch_size // process_count
        if num_epochs is None:
            self._full_batches, self._tail, self._len = None, 0, sys.maxsize
        else:
            total = len(self._base) - len(self._base) % process_count
            self._full_batches = total // global_batch_size
            self._tail = (total - self._full_batches * global_batch_size) // process_count  # rows per process
            self._len = self._full_batches * self._local + self._tail

    def global_index(self, index: int) -> int:
        """Position in the single-process order of this process's `index`-th record."""
        batch, row = divmod(index, self._local)
        if self._full_batches is not None and batch >= self._full_batches:
            return self._full_batches * self._global + self._index * self._tail + row
        return batch * self._global + self._index * self._local + row

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if not 0 <= index < self._len:
            raise IndexError(f"record {index} is outside this process's {self._len} records")
        meta = self._base[self.global_index(index)]
        # `index` stays local: grain's iterator state counts this process's own records.
        return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)

    def __repr__(self) -> str:  # grain checks it on restore: a process cannot take another's position
        return (f"GlobalBatchSampler({self._base!r}, global_batch_size={self._global}, "
                f"process_index={self._index}, process_count={self._count})")
