"""The training loop and the recipes that run it (fine-tuning, base training, StaMo pretraining).

Modules (import the one you need; this package import stays light):
    loop          train_loop(cfg, run_dir, training, stream, accelerator, log, hooks): the one loop; Hooks,
                  resume_point, to_device
    supervision   FinetuneCollator (samples -> model batch with supervision counts), SupervisionCheck
    distributed   accelerate setup (plain python or torchrun; gloo on CPU, nccl on CUDA), seeding, rank helpers
    optim         OptimizerConfig, AdamW builder, warm-up + constant/cosine/step schedules
    run_config    RunConfig: the run fields every recipe shares (run_dir, resume, max_steps, save_steps, ...)
    step          train_step(model, micro_batches, optimizer, ...): one optimizer step with gradient
                  accumulation, returns float metrics
    checkpoint    atomic checkpoints (model, optimizer, scheduler, RNG, step, data position), keep-last-N,
                  find_latest_checkpoint, exact resume
    logger        TrainLogger: tqdm with running loss, tensorboard scalars, optional wandb, metrics.jsonl
    batches       the loop's resumable streams: EpochBatches (in-memory, rank-sharded), LoaderBatches (a
                  DataLoader); resumed_position converts a position to a changed batch size
"""
