-- issue 17: channels as one file each. A member's addresses on the channels that need one
-- (e-mail, SMS) live in one table instead of a column per channel; verification codes and
-- their rate caps name the channel they are for; the send history names the channel, so
-- every channel's limits hold across restarts and instances.

-- One verified address per member and channel.
CREATE TABLE member_bindings (
    userid      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    address     TEXT NOT NULL,
    verified_at BIGINT NOT NULL,
    PRIMARY KEY (userid, channel)
);
INSERT INTO member_bindings (userid, channel, address, verified_at)
    SELECT userid, 'email', email, created_at FROM members WHERE email IS NOT NULL;
ALTER TABLE members DROP COLUMN email;

-- Pending verification codes: one per member (a new request replaces it, on any channel).
CREATE TABLE binding_codes (
    userid        TEXT PRIMARY KEY,
    channel       TEXT NOT NULL,
    address       TEXT NOT NULL,
    code          TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    attempts_left BIGINT NOT NULL
);
INSERT INTO binding_codes (userid, channel, address, code, expires_at, attempts_left)
    SELECT userid, 'email', address, code, expires_at, attempts_left FROM email_codes;
DROP TABLE email_codes;

-- Codes requested, to cap them per member and per address (each channel its own cap).
CREATE TABLE binding_requests (
    userid       TEXT NOT NULL,
    channel      TEXT NOT NULL,
    address      TEXT NOT NULL,
    requested_at BIGINT NOT NULL
);
INSERT INTO binding_requests (userid, channel, address, requested_at)
    SELECT userid, 'email', address, requested_at FROM email_requests;
DROP TABLE email_requests;
CREATE INDEX binding_requests_by_member ON binding_requests (userid, requested_at);
CREATE INDEX binding_requests_by_address ON binding_requests (address, requested_at);

-- A fixed address on the message's one channel (a verification code, to the address being
-- bound), e-mail or phone.
ALTER TABLE messages RENAME COLUMN email_to TO address_to;

-- What was sent, per channel (existing rows were all WeCom's).
ALTER TABLE sends ADD COLUMN channel TEXT NOT NULL DEFAULT 'wecom';
DROP INDEX sends_by_member;
CREATE INDEX sends_by_member ON sends (userid, channel, sent_at);
-- A shared destination's windows count every member's sends.
CREATE INDEX sends_by_channel ON sends (channel, sent_at);
DROP TRIGGER messages_count_send;
CREATE TRIGGER messages_count_send AFTER UPDATE OF status ON messages
    WHEN NEW.status = 'delivered' AND OLD.status = 'queued' AND NEW.via IS NULL
         AND NEW.deliver_all = 0
BEGIN
    INSERT INTO sends (userid, channel, sent_at) VALUES (NEW.userid, NEW.channel, NEW.delivered_at);
END;

-- Texts that cost money (SMS), written before the provider is asked, so the daily caps
-- hold across restarts and instances whatever the outcome (a text that timed out may
-- have been sent and billed). Pruned after a day.
CREATE TABLE charges (
    channel    TEXT NOT NULL,
    userid     TEXT NOT NULL,
    charged_at BIGINT NOT NULL,
    -- The message the text is for (the provider's OutId / SessionContext): a charge left
    -- unsettled means the text may have been sent, so the next try looks it up first.
    out_id     TEXT NOT NULL,
    settled    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX charges_by_time ON charges (channel, charged_at);
CREATE INDEX charges_by_member ON charges (channel, userid, charged_at);
CREATE INDEX charges_by_out_id ON charges (out_id);

-- Destinations a member added in the chat (`robot ops URL`, issue 18): a group robot's
-- address and secret are all its security rests on; kept like push tokens, in a file only
-- its owner can read.
CREATE TABLE member_destinations (
    userid     TEXT NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    address    TEXT NOT NULL,
    secret     TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (userid, name)
);
