"""Staged CogVideoX fine-tuning with TTT layers (issue #6); ``tttgraph finetune`` runs one stage.

Modules (imported on use; diffusers and transformers load only inside them):
``stages`` (stage configs), ``dataset`` (on-disk formats and checks), ``precompute`` (VAE + T5
encoding into sharded clips), ``blocks`` (per-block modules for checkpointing and FSDP2),
``distributed`` (torchrun / FSDP2), ``checkpointing`` (atomic training checkpoints), ``trainer``
(the stage), ``plot`` (loss-curve PNG), ``cli`` (the command).
"""
