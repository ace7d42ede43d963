"""``python -m edge_sdk.distillation TEACHER -o STUDENT --data ...``: ``edge-sdk distill``, the
entry ``torchrun`` launches once per process:

    torchrun --standalone --nproc-per-node 2 -m edge_sdk.distillation TEACHER -o STUDENT --data DATA --keep-layers 2
"""

from edge_sdk.cli import main

if __name__ == "__main__":
    main(["distill", *__import__("sys").argv[1:]], prog_name="python -m edge_sdk.distillation")
