"""Data curation for `hone data prepare`: clean, deduplicate, scrub PII, filter, decontaminate, split, replay."""
