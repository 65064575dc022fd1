"""Stage 2 (RAR): GRPO on the attribute generator with a retrieval reward.

``reward`` (the batched Recall@k reward served by Ray actors) and ``grpo`` (TRL's GRPOTrainer in
Ray Train workers, checkpoints, held-out evaluation, ``run_rar``).
"""
