// tm-gym telemetry: streams the state of the local player's car to one local TCP client, one
// record per rendered frame. tm_gym/game/telemetry.py decodes what this file writes: the two
// must change together (and tm_gym/emulator/telemetry_server.py sends the same bytes).
//
// Wire format: little-endian float32, the whole record in one write per frame.
//   * tm-gym v2 (default): the 8 bytes "TMGYM" 0x02 0x00 0x00 once after connecting, then
//     records of 19 floats (76 bytes).
//   * TMRL-compatible (setting): no header, records of the first 11 floats (44 bytes), value for
//     value what TMRL's own plugin (TMRL_GrabData) sends, so TMRL's client works unchanged.
//
// Every field and the game member it comes from. All of them are read from ONE player (see
// FindPlayer) and its script API `api` (CSmScriptPlayer), as TMRL does:
//   #  field        TMRL-compatible                    tm-gym v2
//   0  speed        api.Speed (m/s, as the game has    api.Speed * 3.6 (km/h)
//                   it: TMRL sends it unconverted)
//   1  distance     api.Distance (m driven this race)  same
//   2  x            api.Position.x (m)                 same
//   3  y            api.Position.y (m, up)             same
//   4  z            api.Position.z (m)                 same
//   5  steer        api.InputSteer (-1 left .. +1)     same
//   6  gas          api.InputGasPedal (0 .. 1)         same
//   7  brake        api.InputIsBraking (1.0 / 0.0)     same
//   8  finished     GameTerminals[0].UISequence_Current == Finish (1.0 / 0.0)
//   9  gear         float(api.EngineCurGear)           same
//  10  rpm          api.EngineRpm                      same
//  11  race time    -                                  api.CurrentRaceTime / 1000 (s; negative
//                                                      during the start countdown)
//  12  checkpoint   -                                  checkpoints passed this race (see
//                                                      CheckpointCounter)
//  13-15 velocity   -                                  api.Velocity (m/s, world axes)
//  16  yaw          -                                  from the same player's vehicle state
//  17  pitch        -                                  (VehicleState::GetVis(...).AsyncState
//  18  roll         -                                  Dir/Up/Left); NaN when not available
//
// The game: in a local game (Local play, solo) the arena has exactly one player, and that is the
// car streamed. In Time Attack on a server the arena holds every player: we stream the player the
// game terminal controls (the one driven from this PC); TMRL takes Arena.Players[0], which can be
// someone else there. Outside a race (menus, loading, no controlled player) nothing is sent, so a
// client sees a stall instead of garbage. The countdown (race time < 0), respawns and the finish
// pop-up are sent as the game reports them, like TMRL: the client decides what to do with them
// (the finished flag is 1 while the finish sequence shows, until the car respawns).
//
// Only 127.0.0.1 is listened on: nothing outside this PC can connect. One client at a time; when
// it goes away (a write fails) the plugin waits for the next one.

[Setting category="Connection" name="Port" min=1024 max=65535 description="TCP port the plugin listens on (127.0.0.1 only). Must match tm-gym's --port."]
int Setting_Port = 9000;

[Setting category="Connection" name="TMRL-compatible" description="Send TMRL's 11-float records (speed in m/s) without a header instead of tm-gym v2 (19 floats after a header)."]
bool Setting_TmrlCompatible = false;

const string HOST = "127.0.0.1";
// The bits of a quiet NaN float32: written where a v2 value is not available.
const uint32 NAN_BITS = 0x7FC00000;
const float MS_TO_KMH = 3.6f;
// "No landmark seen yet" for CheckpointCounter.
const uint NO_LANDMARK = 0xFFFFFFFF;

void Main()
{
    // Listen forever; if the port cannot be opened (taken by another program), say so and retry.
    while (true) {
        int port = Setting_Port;
        Net::Socket@ server = Net::Socket();
        if (!server.Listen(HOST, port)) {
            warn("tm-gym: cannot listen on " + HOST + ":" + port + " (port in use?); retrying in 5 s");
            sleep(5000);
            continue;
        }
        trace("tm-gym: listening on " + HOST + ":" + port);
        ServeClients(server, port);
        server.Close();
    }
}

// Accepts clients one after the other until the port setting changes.
void ServeClients(Net::Socket@ server, int port)
{
    while (Setting_Port == port) {
        // A listening socket becomes readable when a client is waiting to be accepted.
        if (!server.CanRead()) {
            yield();
            continue;
        }
        Net::Socket@ client = server.Accept();
        if (client is null) {
            yield();
            continue;
        }
        trace("tm-gym: client connected");
        Stream(client, port);
        client.Close();
        trace("tm-gym: client gone");
    }
}

// Sends one record per frame until a write fails or a setting changes.
void Stream(Net::Socket@ client, int port)
{
    while (!client.CanWrite()) {
        yield();
    }
    bool tmrl = Setting_TmrlCompatible;
    if (!tmrl && !WriteMagic(client)) {
        return;
    }
    // One buffer per connection: every record of a connection has the same size, so rewriting
    // it from the start each frame keeps it exactly one record long.
    MemoryBuffer@ buf = MemoryBuffer(0);
    CheckpointCounter checkpoints;
    while (Setting_Port == port && Setting_TmrlCompatible == tmrl) {
        CSmArenaClient@ playground = cast<CSmArenaClient>(GetApp().CurrentPlayground);
        CSmPlayer@ player = FindPlayer(playground);
        CSmScriptPlayer@ api = player is null ? null : cast<CSmScriptPlayer>(player.ScriptAPI);
        if (api !is null) {
            buf.Seek(0, 0);
            FillRecord(buf, playground, player, api, tmrl, checkpoints);
            buf.Seek(0, 0);
            if (!client.Write(buf)) {
                return;  // the client is gone
            }
        }
        yield();  // wait for the next frame
    }
}

bool WriteMagic(Net::Socket@ client)
{
    // "TMGYM", protocol version 2, two reserved zero bytes.
    array<uint8> magic = {0x54, 0x4D, 0x47, 0x59, 0x4D, 0x02, 0x00, 0x00};
    MemoryBuffer@ buf = MemoryBuffer(0);
    for (uint i = 0; i < magic.Length; i++) {
        buf.Write(magic[i]);
    }
    buf.Seek(0, 0);
    return client.Write(buf);
}

// The player whose car is streamed: the one this PC's game terminal controls, else the only player
// of the arena (a local game before the terminal is set up). Null outside a race.
CSmPlayer@ FindPlayer(CSmArenaClient@ playground)
{
    if (playground is null || playground.Arena is null) return null;
    if (playground.GameTerminals.Length > 0) {
        CSmPlayer@ controlled = cast<CSmPlayer>(playground.GameTerminals[0].ControlledPlayer);
        if (controlled !is null) return controlled;
    }
    if (playground.Arena.Players.Length == 1) {
        return cast<CSmPlayer>(playground.Arena.Players[0]);
    }
    return null;
}

// TMRL's finish test: the game terminal shows the finish sequence.
bool IsFinished(CSmArenaClient@ playground)
{
    if (playground.GameTerminals.Length == 0) return false;
    return playground.GameTerminals[0].UISequence_Current == SGamePlaygroundUIConfig::EUISequence::Finish;
}

// Writes one record (see the table at the top) at the buffer's position.
void FillRecord(MemoryBuffer@ buf, CSmArenaClient@ playground, CSmPlayer@ player,
                CSmScriptPlayer@ api, bool tmrl, CheckpointCounter@ checkpoints)
{
    buf.Write(tmrl ? api.Speed : api.Speed * MS_TO_KMH);
    buf.Write(api.Distance);
    buf.Write(api.Position.x);
    buf.Write(api.Position.y);
    buf.Write(api.Position.z);
    buf.Write(api.InputSteer);
    buf.Write(api.InputGasPedal);
    buf.Write(api.InputIsBraking ? 1.0f : 0.0f);
    buf.Write(IsFinished(playground) ? 1.0f : 0.0f);
    buf.Write(float(api.EngineCurGear));
    buf.Write(api.EngineRpm);
    if (tmrl) return;

    buf.Write(float(api.CurrentRaceTime) / 1000.0f);  // milliseconds in the game
    buf.Write(float(checkpoints.Update(player, api)));
    vec3 velocity = api.Velocity;
    buf.Write(velocity.x);
    buf.Write(velocity.y);
    buf.Write(velocity.z);
    WriteOrientation(buf, player);
}

// Yaw, pitch and roll of `player`'s own car (not the camera's): 0 yaw along +x, +pi/2 along +z;
// nose up and left side up positive. NaN x3 when the vehicle state cannot be found.
void WriteOrientation(MemoryBuffer@ buf, CSmPlayer@ player)
{
    CSceneVehicleVis@ vis = VehicleState::GetVis(GetApp().GameScene, player);
    if (vis is null || vis.AsyncState is null) {
        buf.Write(NAN_BITS);
        buf.Write(NAN_BITS);
        buf.Write(NAN_BITS);
        return;
    }
    vec3 dir = vis.AsyncState.Dir;
    vec3 up = vis.AsyncState.Up;
    vec3 left = vis.AsyncState.Left;
    buf.Write(Math::Atan2(dir.z, dir.x));
    buf.Write(Math::Asin(Math::Clamp(dir.y, -1.0f, 1.0f)));
    buf.Write(Math::Atan2(left.y, up.y));
}

// Checkpoints passed in the current race. api.RaceWaypointTimes lists them in a local game, but
// published plugins report it stays empty in Time Attack; there we count the changes of the
// player's respawn landmark (it moves to each checkpoint crossed). Reset when a new race starts
// (race time goes back: respawn at the start, restart, countdown).
class CheckpointCounter
{
    int m_lastRaceTime = 0;
    uint m_lastLandmark = NO_LANDMARK;
    int m_counted = 0;

    int Update(CSmPlayer@ player, CSmScriptPlayer@ api)
    {
        int raceTime = api.CurrentRaceTime;
        uint landmark = player.CurrentLaunchedRespawnLandmarkIndex;
        if (raceTime < 0 || raceTime < m_lastRaceTime) {
            m_counted = 0;
            m_lastLandmark = landmark;
        } else if (landmark != m_lastLandmark) {
            if (m_lastLandmark != NO_LANDMARK) m_counted++;
            m_lastLandmark = landmark;
        }
        m_lastRaceTime = raceTime;
        int listed = int(api.RaceWaypointTimes.Length);
        return listed > m_counted ? listed : m_counted;
    }
}
