"""Training loop pieces shared by the recipes (StaMo pretraining, LIBERO fine-tuning).

Modules (import the one you need; this package import stays light):
    distributed   accelerate setup (plain python or torchrun; gloo on CPU, nccl on CUDA), seeding, rank helpers
    optim         OptimizerConfig, AdamW builder, warm-up + constant/cosine/step schedules
    run_config    RunConfig: the run fields every recipe shares (run_dir, resume, max_steps, save_steps, ...)
    step          train_step(model, micro_batches, optimizer, ...): one optimizer step with gradient
                  accumulation, returns float metrics
    checkpoint    atomic checkpoints (model, optimizer, scheduler, RNG, step, data position), keep-last-N,
                  find_latest_checkpoint, exact resume
    logger        TrainLogger: tqdm with running loss, tensorboard scalars, optional wandb, metrics.jsonl
    batches       EpochBatches: deterministic, resumable, rank-sharded batches over an in-memory dataset
"""
