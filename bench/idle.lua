-- wrk script: signed Idle connects, rotating over the seeded devices (bench/seed writes
-- `devices` into devices.lua next to this file).
dofile(os.getenv("ORCHARD_BENCH_DEVICES"))
local i = 0
request = function()
  i = i % #devices + 1
  local d = devices[i]
  return wrk.format("PUT", "/mdm/connect", {
    ["Content-Type"] = "application/x-apple-aspen-mdm",
    ["Authorization"] = "Bearer " .. d.token,
    ["Mdm-Signature"] = d.sig,
  }, d.body)
end
