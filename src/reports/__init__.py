"""What a run writes for a reader: report.md, metrics.json, figures; of a run, a population and the suite."""
