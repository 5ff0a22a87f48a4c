"""Checkpoints: what a checkpoint records about its run (:mod:`~rdpo_lightning.checkpoints.run_record`), adapter-only
checkpoints of LoRA runs (:mod:`~rdpo_lightning.checkpoints.adapter_only`), and ``rdpo export`` to a Hugging Face
directory with a model card (:mod:`~rdpo_lightning.checkpoints.export`, :mod:`~rdpo_lightning.checkpoints.model_card`).
"""
