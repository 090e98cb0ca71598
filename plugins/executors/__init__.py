"""Built-in executors: where the runs of a sweep execute.

- ``local``: in the driver's process, one after another (the default);
- ``pool``: local worker processes, each pinned to a share of the cores or to one GPU;
- ``ray``: Ray tasks on a Ray cluster (optional extra ``bnbench[ray]``);
- ``submitit``: Slurm job arrays through submitit, or its local executor (``bnbench[submitit]``).

The optional engines are imported only when a sweep uses them.
"""

from __future__ import annotations

from bnbench import hookimpl
from bnbench.hookspecs import Register
from bnbench.plugins.executors.local import local
from bnbench.plugins.executors.pool import PoolOptions, pool
from bnbench.plugins.executors.ray_cluster import RayOptions, ray_executor
from bnbench.plugins.executors.submitit_jobs import SubmititOptions, submitit_executor


@hookimpl
def bnbench_register_executors(register: Register) -> None:
    register("local", local, default=True)  # the executor of a manifest that names none
    register("pool", pool, options=PoolOptions)
    register("ray", ray_executor, options=RayOptions)
    register("submitit", submitit_executor, options=SubmititOptions)
