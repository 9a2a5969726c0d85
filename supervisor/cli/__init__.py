"""The command line: `supervisor run | push | status | tasks | schedules | store | health`."""
