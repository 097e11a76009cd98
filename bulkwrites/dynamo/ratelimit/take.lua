-- The token bucket with tickets. KEYS: cap, ctl, bucket.
-- ARGV: units, ticket or '', now or '' (tests), state ttl ms, then RatePolicy.args().
-- Returns {status, wait, ticket, rate, now}, numbers as strings.
--
-- take(n) always books the tokens (the bucket may go negative: a queue, or debt) and hands out
-- a ticket, the position of the booking; the caller may go once the bucket, counted from its
-- ticket, holds min(n, capacity). A waiting caller polls again with its ticket, and the wait is
-- recomputed at the rate of that moment: first come, first served, and a large request is
-- never starved by small ones.
local now = clock(ARGV[3])
local p = read_policy(5)
local ctl = read_ctl(KEYS[2])
local rate = current_rate(KEYS[1], ctl, now, p)
if not rate then return {'unlimited', '0', '', '', fmt(now)} end
local n = tonumber(ARGV[1])
local tokens, issued, ts, capacity = refill(KEYS[3], rate, p.burst, now)
local ticket = tonumber(ARGV[2])
if not ticket or ticket >= issued then  -- a new caller, or a ticket of a bucket since deleted
  ticket = issued
  issued = issued + n
  tokens = tokens - n
end
save_bucket(KEYS[3], tokens, issued, ts, ARGV[4])
local short = ticket + math.min(n, capacity) - (issued + tokens)
if short <= 0 then return {'granted', '0', fmt(ticket), fmt(rate), fmt(now)} end
return {'wait', fmt(short / rate), fmt(ticket), fmt(rate), fmt(now)}
