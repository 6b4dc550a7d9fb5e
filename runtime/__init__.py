"""Process plumbing: settings, the database, migrations, and the DBOS runtime."""
