"""The training engine: loop, optimizer, schedule, AMP, DDP, checkpoints, logging.

It knows nothing of any particular method: methods plug in through
:class:`equiseg.methods.base.Method`.
"""
