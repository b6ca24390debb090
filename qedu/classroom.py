"""A memory-limited kernel for a class on one shared machine (see teacher/jupyterhub_config.py).

Jupyter has no memory limit of its own: one student who builds a 20 GB tensor takes the machine
from everybody. The hub starts each student's kernels with ``python -m qedu.classroom``, which
caps the kernel's data segment (``RLIMIT_DATA``: heap and private anonymous memory, which is
where tensors live) and then starts an ordinary ipykernel. A cell that goes over the limit fails
in that student's notebook with an explanation; nobody else's kernel notices.

``RLIMIT_DATA`` rather than ``RLIMIT_AS``: torch, OpenMP and glibc reserve address space they never
touch (about 0.7 GB of it right after ``import torch``), so an address-space limit would refuse
memory the machine has. A kernel after lesson 02 uses about 0.3 GB of data.

>>> parse_args(["--memory-mib", "512", "-f", "c.json"])
(512, ['-f', 'c.json'])
"""
from __future__ import annotations

import os
import resource
import sys

__all__ = ["DEFAULT_MEMORY_MIB", "parse_args", "limit_memory", "memory_hint", "kernel_spec", "main"]

DEFAULT_MEMORY_MIB = 1536


def parse_args(argv: list[str]) -> tuple[int, list[str]]:
    """Split ``--memory-mib N`` off the arguments; the rest go to ipykernel unchanged.

    Without the flag the limit is ``$QEDU_KERNEL_MEMORY_MIB``, else :data:`DEFAULT_MEMORY_MIB`;
    0 means no limit.

    Raises:
        ValueError: the limit is not a whole number of MiB, or is negative.
    """
    argv = list(argv)
    value = os.environ.get("QEDU_KERNEL_MEMORY_MIB", str(DEFAULT_MEMORY_MIB))
    if "--memory-mib" in argv:
        i = argv.index("--memory-mib")
        if i + 1 >= len(argv):
            raise ValueError("--memory-mib needs a value: the kernel's memory limit in MiB, e.g. --memory-mib 1536.")
        value = argv[i + 1]
        del argv[i:i + 2]
    try:
        mib = int(value)
    except ValueError:
        raise ValueError(f"memory limit {value!r} is not a whole number of MiB; use e.g. 1536, or 0 for none.") from None
    if mib < 0:
        raise ValueError(f"memory limit {mib} MiB is negative; use a positive number of MiB, or 0 for none.")
    return mib, argv


def limit_memory(mib: int) -> None:
    """Cap this process's data segment at ``mib`` MiB (0: leave it unlimited).

    Raises:
        ValueError: ``mib`` is negative.
    """
    if mib < 0:
        raise ValueError(f"mib={mib} is negative; use a positive number of MiB, or 0 for no limit.")
    if mib == 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = mib * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def memory_hint(error: BaseException, mib: int) -> str | None:
    """The explanation a student sees when ``error`` comes from the kernel's memory limit, else None.

    >>> memory_hint(MemoryError(), 1536).startswith("This kernel is limited to 1536 MiB")
    True
    >>> memory_hint(ValueError("bits=1"), 1536) is None
    True
    """
    text = str(error)
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and "can't allocate memory" in text):
        return (f"This kernel is limited to {mib} MiB on the class's shared machine, and this cell asked for more. "
                "Use a smaller batch, model or tensor, or delete big variables you no longer need (del x). "
                "Other students' kernels are not affected; yours still runs.")
    return None


def _install_hint(shell, mib: int) -> None:
    def handler(shell, etype, value, tb, tb_offset=None):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        hint = memory_hint(value, mib)
        if hint:
            print(hint, file=sys.stderr)

    shell.set_custom_exc((MemoryError, RuntimeError), handler)


def kernel_spec(python: str = sys.executable) -> dict:
    """The ``kernel.json`` of the memory-limited kernel, named like the default ``python3`` one.

    The hub puts it first on ``JUPYTER_PATH``, so every notebook (which asks for ``python3``) gets it.
    """
    return {
        "argv": [python, "-m", "qedu.classroom", "-f", "{connection_file}"],
        "display_name": "Python 3 (qedu, memory-limited)",
        "language": "python",
        "metadata": {"debugger": False},
    }


def main(argv: list[str] | None = None) -> None:
    """Limit memory, then run ipykernel with the remaining arguments."""
    mib, rest = parse_args(sys.argv[1:] if argv is None else argv)
    limit_memory(mib)
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(rest)
    if mib:
        _install_hint(app.shell, mib)
    app.start()


if __name__ == "__main__":
    main()
