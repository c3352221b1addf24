#!/bin/sh
# Load hello inside a booted kernel, check it, unload it.  Usage: vm-test.sh PATH/TO/hello.ko
# Run by 'kmodkit test' in each booted kernel (never on the host: it loads a module).
set -eu
ko=${1:?usage: vm-test.sh PATH/TO/hello.ko}
version=0.1.0

insmod "$ko" repeat=2
trap 'rmmod hello 2>/dev/null || true' EXIT

test "$(cat /sys/module/hello/parameters/repeat)" = 2 || { echo "FAIL: repeat is not 2"; exit 1; }
test "$(cat /sys/module/hello/version)" = "$version" || { echo "FAIL: version is not $version"; exit 1; }
printf 'go\n' | tee /proc/driver/hello > /dev/null || { echo "FAIL: cannot write /proc/driver/hello"; exit 1; }
greetings=$(dmesg | grep -c "hello: hello from hello") || true
test "$greetings" -ge 2 || { echo "FAIL: expected 2 greetings in dmesg, found $greetings"; exit 1; }

rmmod hello
trap - EXIT
dmesg | grep -q "hello: goodbye after 2 greetings" || { echo "FAIL: no goodbye in dmesg"; exit 1; }
echo "PASS: hello"
