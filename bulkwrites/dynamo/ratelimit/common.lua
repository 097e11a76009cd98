-- Shared by take.lua and report.lua (prepended to each when they are loaded).
-- Times are the Redis server's TIME unless a test passes one: the workers' clocks never meet.
if redis.replicate_commands then redis.replicate_commands() end

local function fmt(x) return string.format('%.17g', x) end

local function clock(forced)
  local t = tonumber(forced)
  if t then return t end
  local now = redis.call('TIME')
  return tonumber(now[1]) + tonumber(now[2]) / 1000000
end

local function positive(value)
  local x = tonumber(value)
  if x and x > 0 then return x end
  return nil
end

-- The operator's cap, paced so that no window of `cap_window` seconds or more gets more than
-- the cap, even when it starts with a full bucket: pace * (T + burst) <= cap * T for T >= cap_window.
local function paced_cap(cap, burst, cap_window)
  if not cap then return nil end
  if cap_window > burst then return cap * (1 - burst / cap_window) end
  return cap
end

-- Seconds along the curve since the last cut: none while the cut's hold lasts (held at the
-- cut's rate), then the time since.
local function curve_time(ctl, now)
  return math.max(0, now - (ctl.epoch or now) - (ctl.hold or 0))
end

-- The adaptive rate now: CUBIC's curve from the last cut, W(t) = w_max * (1 + c * (t - k)^3),
-- which climbs back to w_max (the last rate the table took) in k seconds, stays near it, then
-- probes above it ever faster. Never above `max_over` times the rate calls were actually sent
-- (botocore's adaptive mode clamps at twice the measured rate the same way), never below min_rate.
local function probe_rate(ctl, now, c, max_over, min_rate, linear, linear_for)
  if ctl.mode ~= 'ctl' then return nil end
  local d = curve_time(ctl, now) - (ctl.k or 0)
  local growth = c * d * d * d
  -- Above w_max, linear at `linear` x w_max per second for `linear_for` seconds: a table with
  -- burst capacity hides an overshoot until its burst is spent, and a cubic probe would be far
  -- above by then. Past that, CUBIC's convex growth is added: a w_max that was no rate the table
  -- took (a cut set by its bound on a round that latency made unreliable) is left in seconds,
  -- where the linear pace alone took ~40 s to find the table.
  if d > 0 then
    local beyond = math.max(0, d - linear_for)
    growth = linear * d + c * beyond * beyond * beyond
  end
  local r = ctl.w_max * (1 + growth)
  if ctl.sent and ctl.sent > 0 and r > max_over * ctl.sent then r = max_over * ctl.sent end
  if r < min_rate then r = min_rate end
  return r
end

local CTL_FIELDS = {'mode', 'w_max', 'k', 'epoch', 'sent', 'dlv', 'srtt', 'bg', 'bg_at',
  'rs', 'rn', 'ru', 'rr', 'rsh', 'rsq', 'rc', 'rp', 'rk', 'fk', 'fc', 'f1', 'fa', 'fz', 'chk', 'pre', 'pre_at', 'e0', 'a0', 'am', 't0', 'chain', 'cs', 'cc', 'hold', 'bq'}

local function read_ctl(key)
  local raw = redis.call('HMGET', key, unpack(CTL_FIELDS))
  local ctl = {}
  for i, name in ipairs(CTL_FIELDS) do
    if name == 'mode' then ctl.mode = raw[i] or nil
    else ctl[name] = tonumber(raw[i]) end
  end
  return ctl
end

-- The rate a call may use now: the lower of the paced cap and the adaptive rate; nil = unlimited.
local function current_rate(cap_key, ctl, now, p)
  local cap = positive(redis.call('GET', cap_key))
  local paced = paced_cap(cap, p.burst, p.cap_window)
  local adaptive = probe_rate(ctl, now, p.c, p.max_over, p.min_rate, p.linear, p.linear_for)
  local rate = paced
  if adaptive and (not rate or adaptive < rate) then rate = adaptive end
  return rate, cap, paced, adaptive
end

local function refill(key, rate, burst, now)
  local capacity = rate * burst
  local s = redis.call('HMGET', key, 'tokens', 'issued', 'ts')
  local tokens = tonumber(s[1])
  if not tokens then return capacity, 0, now, capacity end
  local issued, ts = tonumber(s[2]) or 0, tonumber(s[3]) or now
  if now > ts then
    tokens = tokens + (now - ts) * rate
    ts = now
  end
  if tokens > capacity then tokens = capacity end
  return tokens, issued, ts, capacity
end

local function save_bucket(key, tokens, issued, ts, ttl)
  redis.call('HSET', key, 'tokens', fmt(tokens), 'issued', fmt(issued), 'ts', fmt(ts))
  redis.call('PEXPIRE', key, ttl)
end

-- RatePolicy.args() in this order, from ARGV[first] on.
local POLICY_FIELDS = {'burst', 'cap_window', 'c', 'max_over', 'min_rate', 'min_round', 'rtt_rounds',
  'min_calls', 'z', 'headroom', 'floor_fraction', 'floor_window', 'release_after', 'bg_weight',
  'min_excess', 'linear', 'min_background', 'linear_for', 'chain_cuts', 'bg_cuts', 'evidence_window',
  'hold_first', 'hold_max', 'probe_cut', 'seen_rounds', 'seen_rank'}

local function read_policy(first)
  local p = {}
  for i, name in ipairs(POLICY_FIELDS) do p[name] = tonumber(ARGV[first + i - 1]) end
  return p
end
