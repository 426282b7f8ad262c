-- issue 31: as SQLite's 0013. The writer records each send itself, in the same transaction
-- as the outcome (src/store/writer.rs, `apply_updates`), with exactly the trigger's rule: a
-- message going from queued to delivered, not carried by a digest, not a `deliver_all`
-- message, counts once on its channel at its delivery time. The PL/pgSQL trigger ran once
-- per delivered row; the writer does it in one statement per batch.
DROP TRIGGER messages_count_send ON messages;
DROP FUNCTION messages_count_send();
