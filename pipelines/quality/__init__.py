"""The data-quality gate behind the validate stage.

- `checks`: the named checks, their severity (`block` or `warn`) and their results.
- `settings`: the `validate` section of params.yaml as typed rules.
- `suites`: one Great Expectations suite per table, built in Python from the rules.
- `images`: the facts about item image files that the `images` suite judges.
- `drift`: the profile of accepted data and its comparison with new data.
- `snapshots`: the last good snapshot and the quarantine of rejected data.
- `engine`: runs the suites with Great Expectations and builds Data Docs.
- `report`: the plain-text summary and the JSON report.

Nothing here imports Great Expectations at module import time.
"""
