"""Schema-driven extraction into reviewed, traceable table rows (Datasette hooks only)."""
