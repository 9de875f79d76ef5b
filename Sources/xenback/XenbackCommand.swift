import ArgumentParser
import XenProcess

@main
struct XenbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenback",
        abstract: "Xen PV block and network backends: tools, benchmarks, frontends.",
        version: BuildVersion.text,
        subcommands: [DemoCommand.self, StatusCommand.self, BenchCommand.self, FrontCommand.self, GuestCommand.self, XenStoredCommand.self, SimCommand.self])

    static func main() async {
        ParentLifeline.honour()
        await main(nil)
    }
}
