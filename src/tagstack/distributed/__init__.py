"""Running past one machine: batch tagging and embedding on Ray (``ray_batch``).

Training under ``torchrun`` (DistributedDataParallel) does not live here:
this package sits above ``experiments`` in the layer order, and the code that
needs torchrun is below it. The process group, barriers
(``rank_zero_first``) and the all-gather of stage 2's shares are in
:mod:`tagstack.runtime`; the shares of each batch and the gradients in
:mod:`tagstack.train.loop`; that only rank 0 writes in :mod:`tagstack.fileio`;
joining the group and quieting the other processes' output in
:mod:`tagstack.cli.main`.
"""
