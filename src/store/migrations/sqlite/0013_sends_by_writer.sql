-- issue 31: the writer records each send itself, in the same transaction as the outcome
-- (src/store/writer.rs, `apply_updates`), with exactly the trigger's rule: a message going
-- from queued to delivered, not carried by a digest, not a `deliver_all` message, counts
-- once on its channel at its delivery time. The trigger ran once per delivered row; the
-- writer does it in one statement per batch.
DROP TRIGGER messages_count_send;
