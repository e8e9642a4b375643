"""Completion e-mails: what a finished file means for a person, delivered over SMTP (or
written to an outbox), reliably and never at the cost of ingestion."""
