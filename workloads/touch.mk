# The benchmark's workloads: lpw-touch (touch.c, fault latency) and lpw-hot (hot.c,
# working set), each with lpw's shared parts.
TOUCH_OBJS := $(addprefix $(OUT)/,touch.o pattern.o region.o statefile.o verify.o idle.o)

all: $(OUT)/lpw-touch

$(OUT)/lpw-touch: $(TOUCH_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^

# lpw-hot, the benchmark's working-set workload.
HOT_OBJS := $(addprefix $(OUT)/,hot.o pattern.o region.o statefile.o verify.o idle.o)

all: $(OUT)/lpw-hot

$(OUT)/lpw-hot: $(HOT_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^
