-- POST a Feishu v2 event per request, each with a message_id never sent before.
-- Usage: wrk ... -s bench/wrk_post.lua URL -- BODIES_FILE RUN_PREFIX
-- BODIES_FILE holds one JSON body per line, each with the placeholder @@MID@@ as its message_id.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   bodies = {}
   for line in io.lines(args[1]) do
      if #line > 0 then table.insert(bodies, line) end
   end
   prefix = args[2] .. string.format("%02d", tid)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json; charset=utf-8"
end

function request()
   counter = counter + 1
   local mid = string.format("%s%022d", prefix, counter)
   local body = string.gsub(bodies[(counter % #bodies) + 1], "@@MID@@", mid, 1)
   return wrk.format(nil, nil, nil, body)
end
