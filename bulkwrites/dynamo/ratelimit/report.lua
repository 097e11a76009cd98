-- What calls cost and how DynamoDB answered; decides the job's rate once per round.
-- KEYS: cap, ctl, bucket, consumed.
-- ARGV: 1 calls, 2 units attempted, 3 units refused, 4 sum of the calls' refused shares,
--       5 sum of their squares, 6 units consumed, 7 seconds the report covers, 8 sum of latencies,
--       9 acquired_at or '', 10 bucket charge, 11 now or '' (tests), 12 state ttl ms,
--       13 consumed ttl ms, 14 calls refused some units, 15 the background share the caller last
--       heard, then RatePolicy.args() from 16.
-- Returns {cap or '', rate or '', now, event or '', background share}.
--
-- Capacity evidence is the share of each call's units DynamoDB refused (a throttling error
-- refuses them all; UnprocessedItems some): calls that failed for other reasons (5xx, a dropped
-- connection) are not reported here as calls at all. Shares are summed over a round (at least
-- min_round, two smoothed round trips and min_calls calls, counting only calls admitted since the
-- round began), and the round then decides once:
--   * cut, if its mean share exceeds the background share by more than z standard errors:
--     to what the table took in the round, (1 - excess) x the rate sent, less headroom, never
--     below floor_fraction x the consumption of the last floor_window seconds;
--   * the round after a cut checks it: a capacity limit refuses less at the lower rate (the
--     table's take was fixed); if the share stayed where it was, the refusals do not depend on
--     the rate: that share becomes background and the cut is undone;
--   * otherwise the CUBIC curve keeps probing; an uncapped job whose curve is far above what it
--     sends and that saw no cut for release_after seconds goes back to unlimited.
local now = clock(ARGV[11])
local calls, units, refused = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local share_sum, share_sq, consumed = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local span, latency_sum, acquired_at = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local delta, state_ttl, consumed_ttl = tonumber(ARGV[10]), ARGV[12], ARGV[13]
local refused_calls = tonumber(ARGV[14])
local heard = tonumber(ARGV[15]) or 0
local p = read_policy(16)
local ctl = read_ctl(KEYS[2])
local set = {}  -- fields to write
local event = ''
if heard > 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  -- The job's state is gone while its workers still know the background share they last heard:
  -- Redis restarted empty or was flushed. That share is put back. Learnt again from nothing, under
  -- a fault that refuses a share whatever the rate, the first rounds after the loss fell in the
  -- outage's own slow seconds (the runs waiting on PostgreSQL sent 20-30 WCU/s), the fault's
  -- refusals cut the job to that rate, and at a few calls a second the rounds that would have
  -- learnt the share again took minutes to come (README, "The rate control after an outage").
  ctl.bg, set.bg, set.bg_at = heard, heard, now
  event = 'restore'
  set.ev, set.ev_at, set.ev_bg = 'restore', now, heard
end
local rate, cap, paced = current_rate(KEYS[1], ctl, now, p)

-- 1. Consumption per second of server time: the job page's rate and the floor.
if consumed > 0 then
  local second = math.floor(now)
  redis.call('HINCRBYFLOAT', KEYS[4], string.format('%d', second), fmt(consumed))
  redis.call('HSETNX', KEYS[4], 'first', fmt(now - span))
  if redis.call('HLEN', KEYS[4]) > p.floor_window + 14 then
    for _, field in ipairs(redis.call('HKEYS', KEYS[4])) do
      local s = tonumber(field)
      if field ~= 'first' and s and s < second - p.floor_window - 10 then redis.call('HDEL', KEYS[4], field) end
    end
  end
  redis.call('PEXPIRE', KEYS[4], consumed_ttl)
end

-- 2. The bucket pays what DynamoDB reported instead of the estimate.
if delta ~= 0 and rate then
  local tokens, issued, ts, capacity = refill(KEYS[3], rate, p.burst, now)
  save_bucket(KEYS[3], math.min(capacity, tokens - delta), issued, ts, state_ttl)
end

-- What the table delivered over the last `window` seconds, per second of the whole window: a job
-- younger than the window gets a lower floor, never one inflated by the table's initial burst.
local function delivered(window)
  local second = math.floor(now)
  local total = 0
  for s = second - window + 1, second do
    total = total + (tonumber(redis.call('HGET', KEYS[4], string.format('%d', s))) or 0)
  end
  return total / window
end

-- The share refused whatever the rate: the larger of the one learnt from a cut's test (`bg`) and
-- the one the recent rounds show (`bq`, below).
local function background()
  return math.max(ctl.bg or 0, ctl.bq or 0)
end

-- Probing: above w_max on the curve, or above the last cut's take where the curve aims higher.
local probing = ctl.mode == 'ctl'
  and (curve_time(ctl, now) > (ctl.k or 0) or (rate ~= nil and ctl.a0 ~= nil and rate > ctl.a0))

-- A new round from `at`: its sums start from nothing (in the state read and the fields written).
local ROUND_SUMS = {'rn', 'ru', 'rr', 'rsh', 'rsq', 'rc', 'rp', 'rk', 'fk', 'fc', 'f1', 'fa', 'fz'}
local function new_round(at)
  ctl.rs, set.rs = at, at
  for _, name in ipairs(ROUND_SUMS) do ctl[name], set[name] = 0, 0 end
end

-- 3. The round.
-- Calls count for the round they were admitted in: granted by the bucket since it began, or,
-- while the job is unlimited, unstamped. Unstamped calls reported once the job is under control
-- went out before its first cut: they describe the unlimited rate.
local counts
if acquired_at then counts = not ctl.rs or acquired_at >= ctl.rs else counts = ctl.mode ~= 'ctl' end
if calls > 0 and counts then
  if not ctl.rs then ctl.rs = now - span end
  if ctl.mode ~= 'ctl' and not cap and refused > 0 and (ctl.rr or 0) == 0 then
    -- An unlimited job's first refusals: the round restarts with them. The calls before said
    -- nothing about the table's limit (they went into its burst), and diluting the refusals
    -- with them made the first cut too shallow (another round of refusals at nearly full speed).
    new_round(now - math.max(span, latency_sum / calls))
  end
  ctl.rn = (ctl.rn or 0) + calls
  ctl.ru = (ctl.ru or 0) + units
  ctl.rr = (ctl.rr or 0) + refused
  ctl.rsh = (ctl.rsh or 0) + share_sum
  ctl.rsq = (ctl.rsq or 0) + share_sq
  ctl.rk = (ctl.rk or 0) + refused_calls
  set.rk = ctl.rk
  if latency_sum > 0 then
    local sample = latency_sum / calls
    if ctl.srtt then ctl.srtt = (7 * ctl.srtt + sample) / 8 else ctl.srtt = sample end
    set.srtt = ctl.srtt
  end
  set.rs, set.rn, set.ru, set.rr, set.rsh, set.rsq = ctl.rs, ctl.rn, ctl.ru, ctl.rr, ctl.rsh, ctl.rsq
  ctl.rc = (ctl.rc or 0) + consumed
  set.rc = ctl.rc
  if refused > 0 and calls == 1 then
    -- A refused call, timed by when it was sent (see `refusing_rate` below).
    local sent_at = now - latency_sum
    if (ctl.fk or 0) == 0 or sent_at < ctl.fa then
      if (ctl.fk or 0) == 0 then ctl.fz = sent_at end
      ctl.fa, ctl.f1 = sent_at, consumed
    end
    if sent_at > ctl.fz then ctl.fz = sent_at end
    ctl.fk, ctl.fc = (ctl.fk or 0) + 1, (ctl.fc or 0) + consumed
    set.fk, set.fc, set.f1, set.fa, set.fz = ctl.fk, ctl.fc, ctl.f1, ctl.fa, ctl.fz
  end
  if probing and refused > 0 then
    -- refused while probing: what the probe's cut answers (a round gathering evidence from
    -- below w_max may run into the probe; those older refusals are not the probe's answer)
    ctl.rp = (ctl.rp or 0) + refused
  end
  set.rp = ctl.rp or 0
elseif calls > 0 and ctl.chk == 1 and (not acquired_at or acquired_at < (ctl.epoch or 0)) then
  -- A call sent before the last cut came back after it: the table was still spending its
  -- capacity on the old rate while this round's calls arrived, and refused them for it. The
  -- cut's test starts again, on calls that meet a table serving only the new rate. Without
  -- this, an unlimited start's calls still in flight (latency that varies by tens of ms is
  -- enough) made the round below the cut refuse as much as the cut round: the cut was undone,
  -- a third of every call learnt as "background", and 57-79 % of calls came back partly
  -- refused (tests/ratesim.py with jitter). Calls in flight at a cut are few: this ends.
  new_round(now)
elseif ctl.rs and consumed > 0 then
  -- What the table took counts whenever the call was admitted: see `took` below.
  ctl.rc = (ctl.rc or 0) + consumed
  set.rc = ctl.rc
end

local round_len = math.max(p.min_round, p.rtt_rounds * (ctl.srtt or 0))
if ctl.mode ~= 'ctl' and not cap and (ctl.rr or 0) > 0 then
  round_len = ctl.srtt or 0  -- an unlimited job refused: decide within a round trip
end
-- A probe answered: above the last good rate, with no background share learnt, the first refused
-- unit is the table's limit (see `significant` below), and the round decides at once. Waiting for
-- it to fill (eight calls, two round trips) sent every call of that time into a table already
-- refusing: each probe cost a round of partly refused calls (tests/ratesim.py at 1,000 WCU/s:
-- about half of the calls partly refused in a 20 s job, the other half being the start).
local answered = probing and background() <= 0 and ctl.chk ~= 1 and (ctl.rp or 0) > 0
local full = (ctl.rn or 0) >= p.min_calls and now - (ctl.rs or now) >= round_len
if ctl.rs and (full or answered) then
  local seconds = math.max(now - ctl.rs, 0.001)
  local sent = ctl.ru / seconds  -- units/s attempted in the round
  if not full and ctl.sent then
    -- A round of a call or two measures no rate: the one sent in the rounds before stands for it.
    sent = ctl.sent
  end
  local n = ctl.rn
  local mean = ctl.rsh / n
  local var = math.max(0, ctl.rsq / n - mean * mean)
  local se = math.sqrt(var / n)
  local bg = background()
  local excess = 0
  if mean > bg and bg < 1 then excess = (mean - bg) / (1 - bg) end
  -- Above the last good rate (the probe past w_max), with no background share learnt, any
  -- refused unit is the probe's answer: the table's limit is below. A rate 1-2 % above the
  -- table's refuses one item in some calls, which never passes the significance test in a round
  -- of eight calls: refusals went on for seconds before a cut. Below w_max (climbing back, or
  -- near the last good rate) a round must stand out of its noise: there, cutting on every
  -- refused unit ratchets the rate down (measured: 54-68 % of the capacity delivered).
  local significant = excess >= p.min_excess and (mean - bg) > p.z * se
  if answered then significant = true end
  local current = sent
  if ctl.mode ~= 'ctl' and not cap and ctl.sent and ctl.sent > current then
    -- An unlimited job's first refusals close their round within a round trip, on calls that
    -- were in flight together: the rate they show is a fraction of the one sent (bench: 1,132
    -- WCU/s for ~2,300). The rounds before, a quarter second each, measured it.
    current = ctl.sent
  end
  if rate and rate < current then current = rate end
  if ctl.sent then ctl.sent = (ctl.sent + sent) / 2 else ctl.sent = sent end
  set.sent = ctl.sent
  local decided = false

  local chain = 0  -- cuts in a row, each tested and found to refuse the same share below it
  local chain_share = 0  -- the share the chain found (below), 0 outside a cut's test
  if ctl.chk == 1 then
    set.chk = 0
    -- The round after a cut tests it. Had capacity caused the refusals, sending less than the
    -- table took in the cut round would end them; if the share stays closer to where it was
    -- than to nothing (and significant) while we send no more than that, it does not depend on
    -- the rate. Only a large share is tested (min_background): a table whose burst capacity ran
    -- out mid-round inflates that round's take, and a small overshoot then looks the same.
    -- Nor must the share have grown: a fault independent of the rate refuses the same share at
    -- a lower rate, while a table whose burst ran out during the cut round refuses more of the
    -- (still too high) lower rate. Without this bound a cut whose round the burst had diluted
    -- (22 % refused) was undone when 30 % was refused below it, and about half of every call
    -- was learnt as "background": seen in bench capacity runs, 55-63 % of calls partly refused.
    -- The share the chain of cuts found, pooled over its rounds: one round of eight calls is
    -- noisy (a throttled call refuses all of its units; two of eight move a round's share from
    -- 0.3 to 0.5), and compared with the last cut's share alone such a round broke the chain.
    -- Under the chaos mix the chain then restarted again and again and the job was cut to
    -- 10 WCU/s over 86 s (tests/ratesim.py, one seed in 30).
    local e0 = ctl.e0 or 0
    if (ctl.cc or 0) > 0 then e0 = ctl.cs / ctl.cc end
    chain_share = e0
    -- Sent no more than the table took in the cut round (a0), give or take the headroom. The
    -- rate the round is judged at is the lower of the rate sent and the rate allowed: the bucket
    -- lets a round start with a quarter second's burst, and a round of 0.1 s measured up to
    -- several times the rate allowed. Judged on the rate sent alone, such a round was not
    -- "below", the chain of cuts that finds a fault restarted, and under the chaos mix a job
    -- was cut to 2-5 WCU/s for minutes (in-process runs through the fault proxy: one in ~10).
    local below = current <= (ctl.a0 or 0) * (1 + p.headroom)
    local same = excess >= 0.5 * e0 and excess <= 1.25 * e0
    -- A small share is noisy in a round of a few calls (one item more or less in a call of 25
    -- is 4 points): it must be found again below cut after cut, where a capacity limit's share
    -- falls to nothing, so it may come back as high as twice the cut's.
    local alike = excess >= 0.5 * e0 and excess <= 2 * e0
    -- A smaller share is tested by repetition instead: a burst running out dilutes one round,
    -- while a fault that ignores the rate refuses the same share below cut after cut. Without
    -- this, a random 4 % of every call cut the rate round after round to nothing (the issue's
    -- first finding, for small shares; tests/ratesim.py: not done in 600 s).
    -- Which of the two explains the round better: a capacity limit keeps the table's take
    -- (t0: the cut round's rate x (1 - its share)) and refuses what this round sends beyond it;
    -- a fault that ignores the rate refuses the cut round's share again. The round's share is
    -- compared with both predictions. Without this, the calls in flight when a table's burst ran
    -- out inflated a cut's take, the round below it still refused half the share (0.29 at 1,495
    -- WCU/s, then 0.15 at 1,190: ~1,000 taken both times), and the capacity limit was learnt as
    -- background: 49 % of calls partly refused in a bench capacity run. A small share is one
    -- item more or less in a call, too noisy for this: repetition decides it.
    local fits = true
    if e0 >= p.min_background and ctl.t0 and current > 0 then
      local capacity_share = math.max(0, 1 - ctl.t0 / current)
      fits = math.abs(excess - e0) < math.abs(excess - capacity_share)
    end
    if significant and alike and below and fits then chain = (ctl.chain or 0) + 1 end
    local learnt = (same and e0 >= p.min_background and chain >= p.bg_cuts) or chain >= p.chain_cuts
    if significant and below and learnt then
      -- the share that persisted below the table's take, over the chain's rounds and this one
      -- (this round's alone was as noisy: 0.21 learnt where every round refused 0.34 on average,
      -- and the rounds after it cut the rate again)
      local persisted = ((ctl.cs or e0) + excess) / ((ctl.cc or 1) + 1)
      bg = bg + (1 - bg) * persisted
      set.bg, set.bg_at = bg, now
      if chain >= p.chain_cuts and e0 < p.min_background then
        -- Found by repetition: every cut of the ratchet was the fault's, and the rate before it
        -- is long gone from the state. Back to the cap, or unlimited: the background is known now,
        -- so only a share beyond it cuts again.
        set.mode, ctl.mode, set.hold, ctl.hold = 'open', 'open', 0, 0
        set.ev, set.ev_at, set.ev_s, set.ev_bg, set.ev_from, set.ev_to = 'undo', now, mean, bg, current, ''
      else
        local back = ctl.pre or current
        set.mode, set.w_max, set.k, set.epoch, set.sent, set.hold = 'ctl', back, 0, now, back, 0
        ctl.mode, ctl.w_max, ctl.k, ctl.epoch, ctl.sent, ctl.hold = 'ctl', back, 0, now, back, 0
        set.ev, set.ev_at, set.ev_s, set.ev_bg, set.ev_from, set.ev_to = 'undo', now, mean, bg, current, back
      end
      chain = 0
      event = 'undo'
      decided = true
    end
  end

  -- What the table took while it refused, from the refused calls alone: a table whose capacity
  -- (and burst) has run out gives each call what refilled since the call before it, so the units
  -- the refused calls consumed after the first (which may have had the burst's last units),
  -- over the time from the first one's sending to the last one's, is the table's rate.
  local refusing_rate = nil
  if (ctl.fk or 0) >= 4 and ctl.fz - ctl.fa >= 0.01 then
    refusing_rate = (ctl.fc - ctl.f1) / (ctl.fz - ctl.fa)
  end
  if not decided and significant then
    local floor = p.floor_fraction * delivered(p.floor_window)
    -- What the table took: the rate sent less the refused share, or, if higher, what it consumed
    -- over the round from every call that came back in it (admitted before the round or in it).
    -- A table that refuses for capacity is busy: its consumption is its capacity, whatever the
    -- rounds' estimate of the rate sent. Calls still in flight at a cut, and items retried after
    -- it, met a table already empty; a round that counted only its own calls saw them refused
    -- and cut far below the table (bench: 965 -> 482 WCU/s on a 1,000 WCU/s table).
    local estimate = current * (1 - excess)
    local consumed_rate = (ctl.rc or 0) / seconds
    local first = ctl.mode ~= 'ctl' and not cap  -- an unlimited job's first cut
    local measured = full and not first  -- the take is a full round's measure (`am` below)
    if not full then
      -- A probe answered by a call or two: they show only the start of the overshoot (the
      -- table's burst has just run out under the probe), and a few milliseconds measure no
      -- consumption. The cut is TCP's multiplicative decrease at least.
      estimate = current * (1 - math.max(excess, p.probe_cut))
      consumed_rate = 0
      if ctl.a0 and ctl.am == 1 then
        -- The probe went above what the last cut found the table to take (a0), and a table with
        -- burst capacity hid the overshoot until the burst ran out: by then the probe was 20-50 %
        -- above (a 1 s burst drained at the linear pace takes ~10 s). A cut of probe_cut left it
        -- above, and a second round of refused calls cut again (7-25 calls per probe in runs
        -- of scripts/capacity_runs.py). Back to the last take, by halving at most, if a full
        -- round measured it (`am`): an unlimited start's first take is where its cut landed,
        -- often far below the table (the simulator's capacity cases: 89 % delivered when it was
        -- used). A cut that lands at or below it keeps it as the table's measure.
        if ctl.a0 < estimate then estimate = math.max(ctl.a0, current * 0.5) end
        measured = estimate <= ctl.a0
      end
    end
    local took = math.max(estimate, consumed_rate)
    -- At most halve in one round (TCP's decrease): a round's take is an estimate, and a deep
    -- cut on a noisy one costs seconds of climbing back.
    local bound = current * 0.5
    if full and consumed_rate > 0 and math.abs(consumed_rate - estimate) <= 0.25 * math.max(consumed_rate, estimate) then
      -- Two measures of the take agree: what the table consumed in the round, and the rate sent
      -- less the share refused. A table refusing more than half of what is sent is then found in
      -- one cut, where halving took two or three more rounds of refused calls (bench capacity
      -- runs: 6,180 -> 3,090 -> 1,548 -> 991 WCU/s with a take of ~1,080 measured each time).
      bound = 0
    end
    if first then
      -- An unlimited job's first cut: no halving bound on the rate (the rate it sent was the
      -- machine's, not one the table took; halving it left the job above the table for more
      -- rounds of refused calls), and the take is what the table consumed, if lower, but no
      -- less than half the other estimate (TCP's decrease, on the take). The first refused
      -- calls straddle the end of the burst, and the rate sent less their mean share overstated
      -- the table 1.2-2.2x in bench runs (two or three more cuts: ~8 % of calls partly refused
      -- against 4.6-6.6 % this way); the consumption of one short round understates it (in the
      -- simulator with 50 ms of answer jitter, 0.23 of the table), which the aim below makes up.
      bound = 0
      if consumed_rate > 0 then took = math.max(consumed_rate, estimate * 0.5) end
    end
    local aim_take = took
    local cut_share = excess  -- the share the cut answers: its test weighs the next rounds with it
    if first and (ctl.rk or 0) >= 4 then
      -- Both estimates above are diluted: the round's mean share by the calls the burst served
      -- whole, and its consumption by the burst's last units. Calls refused some units met the
      -- table empty, where each gets what refilled since the one before: the rate sent less
      -- *their* share is the table's rate. In runs of scripts/capacity_runs.py the first cut's
      -- take came out at 1.1-6.7x the table's (1,000 WCU/s), and each further round at that
      -- rate sent 7-30 more calls into the empty table; this one came out at 0.4-1.4x. Below the
      -- table the aim of the curve (below) brings the job back up within a second.
      local share = ctl.rsh / ctl.rk
      took = math.min(took, current * (1 - share))
      -- So is the share the cut answers. Weighed against the diluted one, a round below the cut
      -- still above the table refused about as much, looked like a fault that ignores the rate,
      -- and a capacity run learnt its limit as background (49.8 % of its calls partly refused).
      if share > bg and bg < 1 then cut_share = math.max(excess, (share - bg) / (1 - bg)) end
    elseif full and bg <= 0 and refusing_rate and (ctl.fk or 0) >= 0.8 * n then
      -- Nearly every call of the round refused: the table was empty throughout, and what the
      -- refused calls consumed over the time they were sent is its rate. After an unlimited
      -- start the second cut's take was 1.0-1.3x the table's, this rate 0.9-1.0x: the third
      -- cut, and its round of refused calls, is no longer needed.
      took = math.min(took, math.max(refusing_rate, 0.5 * took))
    end
    local new = math.max(took * (1 - p.headroom), bound, floor, p.min_rate)
    if new < current then
      if first then
        -- An uncapped job ran unlimited until now: DynamoDB's capacity (and its burst) is used
        -- up, so its first bucket starts empty instead of full. Starting full sent another
        -- bucket's worth at once into the exhausted table.
        if redis.call('EXISTS', KEYS[3]) == 0 then save_bucket(KEYS[3], 0, 0, now, state_ttl) end
      end
      local w_max = math.max(took, new)
      if first then
        -- That take is measured on the few calls of one round trip, as the burst ran out, and
        -- came out as low as 0.35-0.6 of the table in bench runs: a curve aimed at it then crept
        -- above it at the linear probe's pace (10-12 s to find a 1,000 WCU/s table; 81-90 % of
        -- it delivered). The curve aims at TCP's halved rate instead, no more than twice the
        -- take: back near the table in 2-3 s. Above the take the job is probing (see
        -- `probing`): the first refused item there cuts, so a take that was right costs little.
        -- The aim is taken from the estimates that overstate the table, never below them: the
        -- refused calls' own share is only where the cut lands (aimed at half a rate sent that
        -- was measured low, one job climbed for 10 s at 66 % of the table).
        w_max = math.max(w_max, aim_take, math.min(current * 0.5, 2 * aim_take))
      end
      local k = 0
      if new < w_max then k = math.pow((1 - new / w_max) / p.c, 1 / 3) end
      -- The table where the last cut found it: hold below it longer each time (see RatePolicy).
      local hold = 0
      if not first and ctl.a0 and math.abs(took - ctl.a0) <= p.headroom * ctl.a0 then
        hold = math.min(p.hold_max, math.max(p.hold_first, 2 * (ctl.hold or 0)))
      end
      local last_cut = ctl.epoch
      set.mode, set.w_max, set.k, set.epoch, set.hold = 'ctl', w_max, k, now, hold
      ctl.mode, ctl.w_max, ctl.k, ctl.epoch, ctl.hold = 'ctl', w_max, k, now, hold
      -- A chain of cuts is tested, and undone, as one: `pre` is the rate before its first cut.
      -- So is a run of cuts each within floor_window seconds of the last, even where a test
      -- round in between ended the chain: the undo goes back to where the run began. Taken
      -- from the last chain alone, an undo under the chaos mix went back to 449 WCU/s where the
      -- job had run at 3,390 before the run of cuts, and the job crept back up for 20 s. A run
      -- lasts at most twice floor_window: a job held at a table's limit for an hour cuts every
      -- few seconds, and the rate it started at is no rate to go back to.
      local pre = current
      local running = ctl.chk == 1
        or (last_cut and now - last_cut <= p.floor_window and now - (ctl.pre_at or now) <= 2 * p.floor_window)
      if running and ctl.pre then pre = math.max(ctl.pre, current) else set.pre_at = now end
      set.chk, set.pre, set.e0, set.a0, set.t0, set.chain = 1, pre, cut_share, took, estimate, chain
      if measured then set.am = 1 else set.am = 0 end
      if chain > 0 then
        set.cs, set.cc = (ctl.cs or ctl.e0 or 0) + excess, (ctl.cc or 1) + 1
      else
        set.cs, set.cc = cut_share, 1
      end
      event = 'cut'
      set.ev, set.ev_at, set.ev_s, set.ev_bg, set.ev_from, set.ev_to, set.ev_floor =
        'cut', now, mean, bg, current, new, floor
      set.ev_took = took
    end
  end
  if chain > 0 and event == '' and chain_share >= p.min_background then
    -- The round went on the chain (the same share, below the take) without a cut: the take it
    -- measured, with calls sent before it still coming back, was no lower than the rate sent.
    -- The test goes on into the next round with this one's share pooled. Dropped here, the
    -- chain restarted at the next cut, and under the chaos mix with 30 ms of answer jitter it
    -- never reached its length: a job cut round after round to 3 WCU/s for ten minutes
    -- (tests/ratesim.py, two seeds in 40). A small share is left to the repetition: kept going,
    -- its tests ran into more noisy rounds, and 4 % refused at random took 30 s instead of 10.
    set.chk, set.chain = 1, chain
    set.cs, set.cc = (ctl.cs or ctl.e0 or 0) + excess, (ctl.cc or 1) + 1
  end
  -- A round that refused some, not enough to stand out of its noise, goes on gathering evidence
  -- (no background learnt yet, at most evidence_window seconds): an overshoot of 5-10 % refuses
  -- one or two items in most calls, which eight calls cannot tell from bad luck, and the next
  -- eight could not either. Calls were refused for seconds at a rate the table did not take
  -- (tests/ratesim.py with jitter: 9-13 % of calls partly refused). A single unlucky call never
  -- passes the test however long the round: with k refused calls alike, mean/se is about sqrt(k).
  local extend = not decided and not significant and bg <= 0 and ctl.chk ~= 1 and ctl.rr > 0
    and seconds < p.evidence_window
  if extend then
    -- (the round's sums stay; it is decided again at the next report)
  elseif not decided and not significant and (ctl.bg or 0) > 0 then
    -- No evidence this round: a background share, once learnt from a cut's test, follows the
    -- rounds' shares (and fades to nothing when the faults stop).
    local follow = ctl.bg + p.bg_weight * (mean - ctl.bg)
    if follow < 0.005 then follow = 0 end
    set.bg, set.bg_at = math.min(0.95, math.max(0, follow)), now
  end
  if not decided and not significant and ctl.mode == 'ctl' and now - (ctl.epoch or now) >= p.release_after then
    local probe = probe_rate(ctl, now, p.c, math.huge, p.min_rate, p.linear, p.linear_for)
    if (cap and probe >= paced) or (not cap and probe >= p.max_over * ctl.sent) then
      set.mode, set.hold = 'open', 0
      ctl.mode, ctl.hold = 'open', 0
      event = 'open'
      set.ev, set.ev_at, set.ev_from = 'open', now, probe
    end
  end
  if not extend and full and ctl.a0 and ((rate or current) <= ctl.a0 or mean <= 0) then
    -- The share refused whatever the rate, read from the rounds themselves: the seen_rank-th
    -- lowest share of the last seen_rounds rounds run at or below the last cut's take (a0),
    -- where a capacity limit refuses nothing (each cut ends its refusals), while a fault that
    -- ignores the rate refuses its share there round after round. Learnt from cuts' tests
    -- alone, a small share made noisy by whole calls throttled now and then (a round's share
    -- 0.04-0.3) broke chain after chain of tests and each round cut again: 20,000 items took
    -- 19-44 s where 4 s do without faults, and on a table at its limit were not done in 200 s,
    -- cut to 60-90 WCU/s (tests/ratesim.py). Rounds above the take do not count: there the
    -- refusals are a probe's or a table's. Counted, a table whose capacity fell under the job
    -- (1,000 to 400 WCU/s, the floor holding the job above it for seconds) had its refusals
    -- learnt as background: 48-92 % of calls partly refused, where 34-36 % are either way.
    -- A round that refused nothing counts at any rate (no table and no fault refused it): a
    -- fault that has gone away fades out of the share even while the job runs unlimited above
    -- the take, where it would otherwise stay and let a table's refusals up to it go uncut.
    local seen = {}
    for x in string.gmatch(redis.call('HGET', KEYS[2], 'qs') or '', '[^,]+') do seen[#seen + 1] = tonumber(x) end
    seen[#seen + 1] = mean
    while #seen > p.seen_rounds do table.remove(seen, 1) end
    local parts = {}
    for i, x in ipairs(seen) do parts[i] = string.format('%.4f', x) end
    set.qs = table.concat(parts, ',')
    local before = ctl.bq or 0
    ctl.bq = 0
    if #seen >= p.seen_rounds then
      table.sort(seen)
      ctl.bq = seen[p.seen_rank]
      if ctl.bq < p.min_excess then ctl.bq = 0 end
    end
    set.bq = ctl.bq
    if before <= 0 and ctl.bq > (set.bg or ctl.bg or 0) + p.min_excess and ctl.mode == 'ctl' and event ~= 'undo' then
      -- Found, beyond what a chain of cut tests had learnt: the cuts before were the fault's as
      -- much as the table's. As when a chain finds it, back to the cap or unlimited, where only
      -- a share beyond it cuts. Left to climb from where the cuts had put it, a job refused 4 %
      -- at random took 25-31 s where the chain's undo took 10-12 (tests/ratesim.py, 40,000
      -- items). Where a chain had found it already (in this round too), going unlimited again
      -- only cost a round of refused calls and a deep cut (in-process chaos runs: 6.6-7.9 s
      -- where most take 3).
      set.mode, ctl.mode, set.hold, ctl.hold = 'open', 'open', 0, 0
      set.ev, set.ev_at, set.ev_s, set.ev_bg, set.ev_from, set.ev_to = 'undo', now, mean, ctl.bq, current, ''
      event = 'undo'
    end
  end
  if not extend then new_round(now) end
end

local flat = {}
for name, value in pairs(set) do
  flat[#flat + 1] = name
  if type(value) == 'number' then flat[#flat + 1] = fmt(value) else flat[#flat + 1] = value end
end
if #flat > 0 then
  redis.call('HSET', KEYS[2], unpack(flat))
  redis.call('PEXPIRE', KEYS[2], state_ttl)
end

rate = current_rate(KEYS[1], ctl, now, p)
local cap_text, rate_text = '', ''
if cap then cap_text = fmt(cap) end
if rate then rate_text = fmt(rate) end
if set.bg then ctl.bg = set.bg end
return {cap_text, rate_text, fmt(now), event, fmt(background())}
