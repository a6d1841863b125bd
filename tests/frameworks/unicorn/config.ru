# A bare Rack app for tests/it/frameworks.rs (unicorn and puma, by hand):
# GET / answers `hello from generation G pid P`. With BROKEN_RELEASE set it
# cannot load (the broken release).
raise "this release is broken (BROKEN_RELEASE is set)" if ENV["BROKEN_RELEASE"]

generation = ENV["BATON_GENERATION"]
run ->(_env) { [200, { "content-type" => "text/plain" }, ["hello from generation #{generation} pid #{Process.pid}\n"]] }
