"""Pretrain a StaMo state model (frozen DINOv2 + compressor -> 2 tokens, SD3-style DiT decoder); the same as
``stamo-vla pretrain``.

One process (CPU or one GPU):
    python recipes/pretrain_stamo.py --config tiny
    python recipes/pretrain_stamo.py --config tiny --max_steps 50 --run_dir runs/stamo_try

Several GPUs (DDP; on CPU the same command runs K gloo processes; ``-m stamo_vla.cli pretrain`` works alike):
    torchrun --standalone --nproc-per-node 8 recipes/pretrain_stamo.py --config paper \\
        --model.backbone.pretrained_path /models/dinov2-large \\
        --model.decoder.transformer.pretrained_path /models/sd3-medium/transformer \\
        --model.decoder.vae.pretrained_path /models/sd3-medium/vae \\
        --source.type rlds --source.data_root_dir /data/rlds --source.dataset_names '[libero_spatial_no_noops]'

``--config`` names a preset in stamo_vla/presets/pretrain_stamo_<name>.yaml (tiny | paper) or a YAML path;
any other flag overrides one field. Rerunning with the same ``--run_dir`` resumes from its newest
checkpoint. Outputs: <run_dir>/{checkpoints,samples,tensorboard}/, metrics.jsonl, config.yaml.
"""

import sys

from stamo_vla.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
