"""Data: sources (synthetic tasks, HF datasets), packing, collate with the token channel, DataModule.

Import the submodules directly (``rosa_lightning.data.datamodule``...); this package imports nothing
at load time so that worker processes and config tests stay cheap.
"""
