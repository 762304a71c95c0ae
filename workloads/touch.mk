# lpw-touch, the benchmark's fault-latency workload: touch.c plus lpw's shared parts.
TOUCH_OBJS := $(addprefix $(OUT)/,touch.o pattern.o region.o statefile.o verify.o idle.o)

all: $(OUT)/lpw-touch

$(OUT)/lpw-touch: $(TOUCH_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^
