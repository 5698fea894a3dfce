"""Several processes (machines, or processes of one machine) working as one: ``jax.distributed`` with CPU
collectives.

:func:`initialize` joins this process to the others; afterwards :func:`deepsea.train.train` trains one model on the
global batch (each process loads its slice of every batch; the parameters are the same as one process's to
rounding) and :func:`deepsea.stream.predict_tree` predicts a folder (each process its share of the images; one
output).  Every process runs the same command with its own ``process_id``.
"""

from __future__ import annotations

import jax

from deepsea.errors import UserError

__all__ = ["initialize", "process_share"]


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Joins the processes through the coordinator ``host:port`` (the first process's address); without arguments
    JAX finds them from a cluster's environment (SLURM, Open MPI, Kubernetes, TPU pods).  CPU devices communicate
    through Gloo, so it also works without accelerators."""
    if (num_processes is None) != (process_id is None) or (num_processes is not None and coordinator is None):
        raise UserError("give the coordinator, the number of processes and this process's id together (or none)")
    if num_processes is not None and not 0 <= process_id < num_processes:  # type: ignore[operator]
        raise UserError(f"process id {process_id} is not in 0..{num_processes - 1}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def process_share(n: int, index: int | None = None, count: int | None = None) -> slice:
    """This process's (or process ``index`` of ``count``'s) contiguous share of ``n`` items: equal shares of
    ``ceil(n / count)``, the last ones shorter or empty."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    share = -(-n // count)
    return slice(min(n, index * share), min(n, (index + 1) * share))
