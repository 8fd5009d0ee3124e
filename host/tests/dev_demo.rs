//! The README's first command ends with `flockd dev --demo`: it must scale a
//! sample workload up and back down to nothing and exit 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn dev_demo_scales_up_and_down_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flockd"))
        .args(["dev", "--demo", "--task-secs", "2"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flockd starts");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("flockd dev --demo did not exit within 240 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "exit {status}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("launch cpu"), "no machine launched for the cpu queue:\n{stdout}");
    assert!(stdout.contains("launch gpu-spot"), "spot is preferred for the gpu queue:\n{stdout}");
    assert!(
        stdout.contains("terminate sim-") && stdout.contains("max-idle-secs"),
        "idle machines were not shut down:\n{stdout}"
    );
    let summary =
        stdout.lines().find(|l| l.starts_with("demo done")).unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    assert!(summary.contains("9 tasks finished") && summary.contains("0 left running"), "{summary}");
}
