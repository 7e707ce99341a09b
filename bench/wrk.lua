-- wrk script for bench/run.py: one endpoint per run, random ids, JSON summary on stdout.
--
--   wrk -t1 -c16 -d10s -s bench/wrk.lua http://127.0.0.1:PORT -- MODE IDS_DIR [TAG [TOKEN [VERSION]]]
--
-- MODE is get_task, list_tasks, create_task (with an Idempotency-Key), create_task_unkeyed,
-- patch_task (PATCH with If-Match, the tasks in turn: run.py sets every task's version to VERSION
-- before each wrk run, a new one each time, so the n-th visit of a task expects VERSION + n - 1; a
-- PATCH the previous wrk run left in flight carries an older version and misses instead of
-- moving a row this run will visit), or mixed (the soak: 70 % reads of one task, 20 %
-- lists, 10 % creates). IDS_DIR holds tasks.txt and projects.txt
-- (one UUID a line), written by run.py from the seeded rows. The seed is fixed, so every
-- server gets the same sequence of requests.
--
-- Every request carries a W3C `traceparent`, as Google's front end adds to each request it
-- forwards; every POST but create_task_unkeyed's carries an `Idempotency-Key`. TAG (16 hex digits, new for each wrk run) makes both
-- unique across runs. TOKEN, when given and not empty, is sent as `Authorization: Bearer TOKEN`.
local mode, ids_dir, tag, authorization
local first_version = 1
local task_ids, project_ids = {}, {}
local posted, sent = 0, 0
-- Globals, not locals: done() reads them from each thread's Lua state with thread:get().
non2xx = 0
samples = ""  -- the first few non-2xx responses, status and body, for the report
sample_count = 0

local function read_lines(path)
  local lines = {}
  local file = assert(io.open(path, "r"), "cannot open " .. path)
  for line in file:lines() do
    if #line > 0 then lines[#lines + 1] = line end
  end
  file:close()
  assert(#lines > 0, "no ids in " .. path)
  return lines
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  mode, ids_dir, tag = args[1], args[2], args[3] or "0000000000000001"
  assert(tag:match("^%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x$"), "TAG must be 16 hex digits")
  if args[4] and #args[4] > 0 then authorization = "Bearer " .. args[4] end
  if args[5] then first_version = assert(tonumber(args[5]), "VERSION must be a number") end
  assert(mode == "get_task" or mode == "list_tasks" or mode == "create_task" or mode == "create_task_unkeyed"
    or mode == "patch_task" or mode == "mixed",
    "unknown mode " .. tostring(mode))
  task_ids = read_lines(ids_dir .. "/tasks.txt")
  project_ids = read_lines(ids_dir .. "/projects.txt")
  math.randomseed(20261122)
end

local function headers()
  sent = sent + 1
  -- Trace id: the run's tag, then a counter (32 hex digits); span id: the counter (16).
  local result = { ["traceparent"] = string.format("00-%s%016x-%016x-01", tag, sent, sent) }
  if authorization then result["Authorization"] = authorization end
  return result
end

function request()
  local kind = mode
  if mode == "mixed" then
    local draw = math.random(100)
    kind = draw <= 70 and "get_task" or (draw <= 90 and "list_tasks" or "create_task")
  end
  if kind == "patch_task" then
    posted = posted + 1
    local index = (posted - 1) % #task_ids + 1
    local id = task_ids[index]
    local version = first_version + math.floor((posted - 1) / #task_ids)
    local patch_headers = headers()
    patch_headers["Content-Type"] = "application/merge-patch+json"
    patch_headers["If-Match"] = string.format('"%s.%d"', id:gsub("-", ""), version)
    return wrk.format("PATCH", "/v1/tasks/" .. id, patch_headers, string.format('{"priority": %d}', posted % 4))
  end
  if kind == "get_task" then
    return wrk.format("GET", "/v1/tasks/" .. task_ids[math.random(#task_ids)], headers())
  end
  local path = "/v1/projects/" .. project_ids[math.random(#project_ids)] .. "/tasks"
  if kind == "list_tasks" then
    return wrk.format("GET", path, headers())
  end
  posted = posted + 1
  local post_headers = headers()
  post_headers["Content-Type"] = "application/json"
  if kind ~= "create_task_unkeyed" then
    post_headers["Idempotency-Key"] = string.format("wrk-%s-%d", tag, posted)
  end
  -- A small task; the "wrk-post" prefix lets run.py delete these rows after the run.
  local body = string.format('{"title": "wrk-post %d", "priority": %d}', posted, posted % 4)
  return wrk.format("POST", path, post_headers, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if sample_count < 5 then
      sample_count = sample_count + 1
      samples = samples .. status .. " " .. string.sub(body or "", 1, 2000) .. "\n"
    end
  end
end

local function json_string(text)
  return '"' .. text:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

function done(summary, latency, requests)
  local bad, collected = 0, ""
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    collected = collected .. (thread:get("samples") or "")
  end
  local errors = summary.errors
  io.write("BENCH_JSON ")
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "non_2xx": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, "samples": %s}\n',
    summary.requests, summary.duration, summary.bytes, bad,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    json_string(collected)
  ))
end
