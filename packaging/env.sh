# Sourced by every script that builds certagent (.ci/run, packaging/build.sh, packaging/demo.sh,
# tests/bench/run.sh), so that what is tested, measured and shipped is built the same way.
#
# aws-lc seeds its random generator from the kernel (getrandom) and, unless built without it,
# also from a CPU-jitter entropy source that it initialises at the first random number each
# process asks for: about 420 million instructions, 0.1 s of CPU, in every `certagent reissue`
# (92 % of its instructions, measured with callgrind). The kernel's generator is what ring,
# BoringSSL and the rest of the system seed from; the jitter source serves FIPS's rule of two,
# which certagent does not claim. Built without it, aws-lc seeds from getrandom and uses RDRAND
# (where the CPU has it) for the personalisation string.
export AWS_LC_SYS_NO_JITTER_ENTROPY=1
