"""hone's numbered schema migrations (Alembic), applied by `hone.store.engine_for` at start-up and `hone db upgrade`.

To change a table: edit `hone/store/tables.py`, then add `versions/NNNN_what_changed.py` with the next number as
`revision` and the newest one as `down_revision` (tests/test_migrations.py fails until the migrated schema
matches the tables). Migrations go forward only: to undo one, write the next. A draft can be generated against
a database at the current head::

    with engine.connect() as connection:
        alembic.command.revision(hone.store.schema.alembic_config(connection), "what changed",
                                 autogenerate=True, rev_id="NNNN")

On SQLite the migrations run with foreign keys off and are checked before commit, so batch operations that
copy a table do not cascade-delete the rows that point at it.
"""
