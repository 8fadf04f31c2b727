"""The CPU-scale studies: resumable stages that write small JSON / markdown / PNG outputs.

- ``stages``           the staged-run driver (commands teed to logs, finished stages marked and skipped, every
                       stage call's commit, machine and time recorded)
- ``policy_study``     ``stamo-vla study``: fine-tuning arms (auxiliary targets) on one small base, seeds sized by power
- ``power``            the power stage's rule: seeds per arm from the pilot's spread, within the time budget
- ``statistics``       seed-level statistics: hierarchical bootstrap, permutation over seeds, mixed model, collapse
- ``policy_report``    its study.json, read from the run's files (``policy_report_md``: REPORT.md; ``policy_plots``:
                       the seed dot plot and curves)
- ``reproduce``        a retrain's adapter tensors against the first run's
- ``heldout``          a fine-tuning run's metrics on its held-out episodes
"""
