// The version and git commit this binary was built from, for --version.
// A plain `swift build` says "dev"; tools/package-deb.sh builds from a copy of
// the tree in which it rewrites this file with the package version and the commit.
enum BuildVersion {
    static let version = "dev"
    static let commit = "dev"

    /// "0.2.0+git20250101.120000.abc1234 (commit abc1234…)", or "dev".
    static var text: String { commit == version ? version : "\(version) (commit \(commit))" }
}
