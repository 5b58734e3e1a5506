-- Model variants: the configured model that served a request naming an experiment.
ALTER TABLE usage_records ADD COLUMN variant text;
