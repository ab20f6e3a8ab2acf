"""shoprec: a nightly training, evaluation and promotion pipeline for recommenders.

Each stage of the DVC pipeline is one module here (`ingest`, `validate`,
`split`, `train`, `evaluate`, `promote`) with a typed core that tests and
Airflow call, and a thin `main()` that reads `params.yaml` and the paths.
"""
