"""Running a suite's cells as jobs (submitit: local subprocesses or Slurm) and folding their records back.

`config` the `[slurm]` table and its command-line overrides, `state` the job folder under
results/<suite>/jobs/ (what `harness status` reads), `merge` the fold of finished records into
records.jsonl, `job` what runs inside a job, `shards` one cell's images split across ranks,
`submit` the submission and the wait.
"""
