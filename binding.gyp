{
  "targets": [
    {
      "target_name": "dmaload",
      "sources": [
        "native/addon.cc",
        "native/args.cc",
        "native/faults.cc",
        "native/live.cc",
        "native/mappings.cc",
        "native/regionops.cc",
        "native/engine.cc",
        "native/queue.cc",
        "native/dmabuf.cc",
        "native/copyloops.cc",
        "native/probe.cc",
        "native/share.cc",
        "native/reactor.cc",
        "native/fdops.cc",
        "native/hash.cc",
        "native/sha256.cc",
        "native/numa.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags_cc": ["-std=c++20", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags!": ["-fno-exceptions"],
      "libraries": ["-lpthread"]
    }
  ]
}
