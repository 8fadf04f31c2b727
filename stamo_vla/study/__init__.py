"""The CPU-scale studies: resumable stages that write small JSON / markdown / PNG outputs.

- ``stages``        the staged-run driver (commands teed to logs, finished stages marked and skipped)
- ``policy_study``  ``stamo-vla study``: a small OpenVLA trained here succeeds on LIBERO; StaMo-aux vs plain LoRA
- ``policy_report`` its REPORT.md / study.json, read from the run's files
- ``heldout``       a fine-tuning run's metrics on its held-out episodes
"""
