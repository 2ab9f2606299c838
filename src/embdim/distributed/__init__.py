"""TorchRec-backed lookups and their sharding over processes.

:func:`embdim.backends.create_lookup` imports :mod:`embdim.distributed.torchrec_lookup` on demand
for ``embedding.backend=torchrec``, so this package imports nothing heavy; :mod:`embdim.distributed.group`
holds the processes of a sharded run and the collectives its trainer needs.
"""

#: Sharding types TorchRec offers for fused tables on the CPU, as ``embedding.sharding.types`` names them:
#: its row-wise types need CUDA devices, and a data-parallel table a dense kernel and a torch optimizer.
CPU_SHARDING_TYPES = ("table_wise", "column_wise", "table_column_wise")
