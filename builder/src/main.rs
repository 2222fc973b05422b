mod adopt_cmd;
mod cli;
mod commands;
mod discover;
mod golden_cmd;
mod images_cmd;
mod lab_cmd;
mod lab_drill_cmd;
mod power_cmd;
mod rebuild;
mod usb_image;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let r = match &cli.command {
        cli::Command::Init(a) => commands::init(a),
        cli::Command::Validate(a) => commands::validate(a),
        cli::Command::Adopt(a) => adopt_cmd::adopt(a),
        cli::Command::Render(a) => commands::render(a),
        cli::Command::Diff(a) => commands::diff(a),
        cli::Command::Topology(a) => commands::topology(a),
        cli::Command::Images(c) => match c {
            cli::ImagesCommand::List(a) => images_cmd::list(a),
            cli::ImagesCommand::Fetch(a) => images_cmd::fetch(a),
            cli::ImagesCommand::Build(a) => golden_cmd::build(a),
            cli::ImagesCommand::Installer(a) => golden_cmd::installer(a),
        },
        cli::Command::Usb(cli::UsbCommand::Write(a)) => commands::usb_write(a),
        cli::Command::Rebuild(a) => rebuild::rebuild(a),
        cli::Command::Recover(a) => rebuild::recover(a),
        cli::Command::Discover(a) => discover::discover(a),
        cli::Command::Power(a) => power_cmd::power(a),
        cli::Command::Provision(a) => power_cmd::provision(a),
        cli::Command::Usb(cli::UsbCommand::Image(a)) => usb_image::image(a),
        cli::Command::Lab(c) => match c {
            cli::LabCommand::Up(a) => lab_cmd::up(a),
            cli::LabCommand::Status(a) => lab_cmd::status(a),
            cli::LabCommand::Console(a) => lab_cmd::console(a),
            cli::LabCommand::Down(a) => lab_cmd::down(a),
            cli::LabCommand::Fail(a) => lab_drill_cmd::fail(a),
            cli::LabCommand::Drill(a) => lab_drill_cmd::drill(a),
            cli::LabCommand::Apply(a) => lab_drill_cmd::apply(a),
        },
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
