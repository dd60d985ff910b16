-- wrk script: POST the AdmissionReview named by $BODY as JSON.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("BODY"), "r"))
wrk.body = file:read("*a")
file:close()
