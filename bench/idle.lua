-- wrk script: signed Idle connects, rotating over the seeded devices (bench/seed writes
-- `devices` to the file named by ORCHARD_BENCH_DEVICES). Requests are formatted once, so the
-- load generator spends its CPU on sending, not on Lua string building.
dofile(os.getenv("ORCHARD_BENCH_DEVICES"))
local requests = {}
for i, d in ipairs(devices) do
  requests[i] = wrk.format("PUT", "/mdm/connect", {
    ["Content-Type"] = "application/x-apple-aspen-mdm",
    ["Authorization"] = "Bearer " .. d.token,
    ["Mdm-Signature"] = d.sig,
  }, d.body)
end
local i = 0
request = function()
  i = i % #requests + 1
  return requests[i]
end
