# Orchard build. GNU Make + pkg-config.
#   make                 build build/orchard (dev: -Werror)
#   make SANITIZE=address,undefined   sanitizer build (into build/san-*)
#   make run             install deps, build, create ./var demo data, serve on 127.0.0.1:8443
#   make test            build with ASan+UBSan and run every test
#   make bench           benchmarks (ratios against a baseline measured in the same run; push
#                        fan-out and a 100,000-enrollment reconciliation job too)
#   make format / format-check

PKGS     := libmicrohttpd gnutls libplist-2.0 openssl sqlite3 libpq libcurl libnghttp2 jansson libsodium librhonabwy
CC       ?= cc
SANITIZE ?=
OPT      ?= -O2

ifeq ($(SANITIZE),)
  BUILD := build
else
  BUILD := build/san
  SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif

DEPS_OK := $(shell pkg-config --exists $(PKGS) && echo yes)
ifneq ($(DEPS_OK),yes)
  ifeq ($(filter format format-check clean,$(MAKECMDGOALS)),)
    $(info orchard: some libraries are missing; running scripts/install-deps.sh)
    DEPS_RC := $(shell ./scripts/install-deps.sh >&2; echo $$?)
    ifneq ($(DEPS_RC),0)
      $(error could not install the build dependencies; see the message above)
    endif
  endif
endif

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla \
           -Wimplicit-fallthrough -Werror
CFLAGS  := -std=c11 -D_GNU_SOURCE -g $(OPT) $(WARN) $(SANFLAGS) -Isrc -I$(BUILD)/gen \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread
LDFLAGS := $(SANFLAGS)

LIB_SRC  := $(filter-out src/main.c,$(shell find src -name '*.c' | sort))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/web_assets.o
UNIT_SRC := $(shell find tests/unit -name 'test_*.c' | sort)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
REPLAY_BIN := $(FUZZ_SRC:fuzz/fuzz_%.c=$(BUILD)/fuzz/replay_%)
WEB      := $(shell find web -type f | sort)

.PHONY: all run test unit bench fuzz format format-check clean gen-check
all: $(BUILD)/orchard

$(BUILD)/orchard: $(BUILD)/obj/src/main.o $(BUILD)/liborchard.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/liborchard.a: $(LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC $<"
	@$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

# Web templates and assets are compiled into the binary (no files to ship beside it).
$(BUILD)/gen/web_assets.c: tools/embed.py $(WEB)
	@mkdir -p $(dir $@)
	python3 tools/embed.py $@ $(WEB)
$(BUILD)/obj/gen/web_assets.o: $(BUILD)/gen/web_assets.c
	@mkdir -p $(dir $@)
	@$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/liborchard.a
	@mkdir -p $(dir $@)
	@echo "  LINK $@"
	@$(CC) $(CFLAGS) -MMD -MP -Itests/unit -o $@ $< $(BUILD)/liborchard.a $(LDFLAGS) $(LDLIBS)

# Each fuzz target also links with a corpus-replay main, so `make test` replays the corpora
# under the sanitizers without libFuzzer; `make fuzz` builds real libFuzzer binaries (clang).
$(BUILD)/fuzz/replay_%: fuzz/fuzz_%.c fuzz/replay_main.c $(BUILD)/liborchard.a
	@mkdir -p $(dir $@)
	@echo "  LINK $@"
	@$(CC) $(CFLAGS) -o $@ $< fuzz/replay_main.c $(BUILD)/liborchard.a $(LDFLAGS) $(LDLIBS)

unit: $(UNIT_BIN) $(REPLAY_BIN)

FUZZ_SECONDS ?= 60
fuzz:
	./fuzz/run.sh $(FUZZ_SECONDS)

run: $(BUILD)/orchard
	./scripts/run-demo.sh $(BUILD)/orchard

# The whole suite: sanitizer build, unit tests, integration, browser and fuzz-corpus replay.
test:
	./scripts/install-deps.sh --test
	$(MAKE) SANITIZE=address,undefined OPT=-O1 all unit
	$(MAKE) all
	./tests/run.sh

$(BUILD)/bench/%: bench/%.c $(BUILD)/liborchard.a
	@mkdir -p $(dir $@)
	@echo "  LINK $@"
	@$(CC) $(CFLAGS) -o $@ $< $(BUILD)/liborchard.a $(LDFLAGS) $(LDLIBS)

# The APNs stand-in is not part of Orchard: only nghttp2 and OpenSSL.
$(BUILD)/bench/h2sink: bench/h2sink.c
	@mkdir -p $(dir $@)
	@echo "  LINK $@"
	@$(CC) $(CFLAGS) -o $@ $< -lnghttp2 -lssl -lcrypto

bench: all $(BUILD)/bench/seed $(BUILD)/bench/baseline $(BUILD)/bench/h2sink
	./bench/run.sh

gen-check:
	python3 tools/gen_tables.py --check

format:
	clang-format -i $$(git ls-files '*.c' '*.h')
format-check:
	clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
