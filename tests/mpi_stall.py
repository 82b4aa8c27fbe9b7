"""``python -m scratchvit.train`` with one rank made to fail before a step's gradient allreduce, for the MPI tests.

    mpiexec -n 2 python tests/mpi_stall.py RANK:STEP[:exit|:sigint] <train arguments>

Rank RANK, before the allreduce of step STEP, stops answering (sleeps far past ``--mpi-timeout``), or with
``:exit`` dies there (exit status 9, no goodbye to MPI), or with ``:sigint`` sends itself SIGINT (Ctrl-C on
one rank only). The other ranks run the real code; so does rank RANK at every other step. The failure is
put in from here, by wrapping :meth:`scratchvit.distributed.MPI.allreduce_mean`: the package holds no test hook.
"""
import os
import signal
import sys
import time


def parse(value: str) -> tuple[int, int, str]:
    """(rank, step, how) of ``RANK:STEP[:exit|:sigint]``; how is "stall", "exit" or "sigint".

    Raises:
        ValueError: a value not of that form.
    """
    parts = value.split(":")
    if len(parts) not in (2, 3) or not (parts[0].isdigit() and parts[1].isdigit()) or \
            parts[2:] not in ([], ["exit"], ["sigint"]):
        raise ValueError(f"{value!r}: expected RANK:STEP, RANK:STEP:exit or RANK:STEP:sigint")
    return int(parts[0]), int(parts[1]), (parts[2] if len(parts) == 3 else "stall")


def main(argv: list[str]) -> int:
    from scratchvit import distributed, train

    rank, at_step, how = parse(argv[0])
    real = distributed.MPI.allreduce_mean

    def allreduce_mean(self, buf, step=None):
        if self.rank == rank and step == at_step:
            if how == "exit":
                os._exit(9)
            elif how == "sigint":
                signal.raise_signal(signal.SIGINT)
            else:
                time.sleep(10 * self.timeout + 60)
        return real(self, buf, step)

    distributed.MPI.allreduce_mean = allreduce_mean
    return train.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
